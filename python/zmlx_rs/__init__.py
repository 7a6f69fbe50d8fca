"""zmlx_rs: fused MLX-CUDA kernels and Rust hot paths that make mlx-lm faster."""

from zmlx_rs import checkpoint, kernels, reference
from zmlx_rs._native import __version__
from zmlx_rs.detok import patch_tokenizer, unpatch_tokenizer
from zmlx_rs.errors import BackendError, CheckpointError, DTypeError, ShapeError, ZmlxError

__all__ = [
    "BackendError",
    "CheckpointError",
    "DTypeError",
    "ShapeError",
    "ZmlxError",
    "__version__",
    "checkpoint",
    "kernels",
    "patch_tokenizer",
    "reference",
    "unpatch_tokenizer",
]
