//! zmlx_rs: fused MLX-CUDA kernels for mlx-lm and the Rust pieces around them.
//!
//! The core modules know nothing of Python; `py` holds the bindings.

pub mod checkpoint;
pub mod detok;
pub mod error;
pub mod kernels;
pub mod nvrtc;
mod py;
pub mod stats;
