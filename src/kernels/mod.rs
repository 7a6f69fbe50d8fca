//! The fused-kernel catalog. Each op module owns its CUDA source, decides how the source is
//! specialised (dtype, sizes fixed for a model such as hidden width or expert count), its
//! launch geometry, and the validation of its inputs. Nothing here touches MLX: the Python
//! layer hands shapes and dtypes in and gets a [`Launch`] back.

pub mod add_rms_norm;
pub mod dropout;
pub mod gather_add;
pub mod glu;
pub mod moe_gating;
pub mod moe_qmv;
pub mod qk_norm_rope;
pub mod qk_rms_norm;
pub mod qkv_rope;
pub mod qmv;
pub mod render;
pub mod shake;

use crate::error::{Error, Result};
use std::fmt;

/// Device helpers every kernel includes: float conversion, vector access.
pub const BASE: &str = include_str!("cuda/base.cuh");
/// SwiGLU with MLX's per-op rounding (before [`ACTIVATIONS`], which uses it).
pub const MLX_SILU: &str = include_str!("cuda/mlx_silu.cuh");
/// Gated-MLP activations and their derivatives.
pub const ACTIVATIONS: &str = include_str!("cuda/activations.cuh");
/// Warp-wide reductions.
pub const WARP: &str = include_str!("cuda/warp.cuh");
/// The scale and output of MLX's RMSNorm, for the kernels that reproduce it.
pub const RMS: &str = include_str!("cuda/rms.cuh");
/// The Philox4x32-10 counter-based generator.
pub const PHILOX: &str = include_str!("cuda/philox.cuh");

/// Element types the kernels see. Names follow `mlx.core.Dtype` (`float32`, `bfloat16`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    C64,
}

impl DType {
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "bool" => DType::Bool,
            "uint8" => DType::U8,
            "uint16" => DType::U16,
            "uint32" => DType::U32,
            "uint64" => DType::U64,
            "int8" => DType::I8,
            "int16" => DType::I16,
            "int32" => DType::I32,
            "int64" => DType::I64,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            "float32" => DType::F32,
            "float64" => DType::F64,
            "complex64" => DType::C64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::C64 => "complex64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 8,
        }
    }

    /// The dtypes our float kernels read and write.
    pub fn is_kernel_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compile-time value MLX substitutes into the kernel (`constexpr int`, `using T = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateArg {
    Int(i32),
    Bool(bool),
    DType(DType),
}

/// One kernel of the catalog: the body MLX wraps in a generated signature, the helper
/// headers it needs (after [`BASE`]), and the names of its parameters.
///
/// Every launch covers its work exactly (see [`exact_grid`]), so no body reads an element
/// count: MLX would otherwise pass shape arrays as arguments on every call.
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
    pub helpers: &'static [&'static str],
    pub body: &'static str,
    /// Whether the precompiled entry carries `__launch_bounds__(block threads, blocks)`, with
    /// the blocks an SM holds at 64 registers a thread (render.rs). Only the precompiled path
    /// (`use_precompiled(True)`) has them: `mx.fast.cuda_kernel` writes the signature itself.
    /// Told the block size, ptxas schedules the tensor-core MoE kernels' steps differently; the
    /// cap keeps it from taking registers at the cost of resident blocks (with `(threads, 1)`
    /// the 8-bit bfloat16 kernels took up to 252 registers, and lost up to 5% at 8 tokens).
    /// Measured on an H100 against the default path's kernels, both kernels at the
    /// Qwen3-30B-A3B and GLM-4.5-Air shapes, 4 and 8 bits, 1 and 8 tokens, interleaved, bit for
    /// bit: GLM-4.5-Air's 4-bit gate|up 1.12x, Qwen3-30B-A3B's 1.02x at one token, no case
    /// below 0.994x (`benchmarks/results/moe_launch_cap_probe-h100-20261207.json`). Only for
    /// kernels whose block size follows from the template, so that one symbol never meets two
    /// block sizes.
    pub launch_bounds: bool,
}

impl KernelSource {
    /// The helper code placed before the kernel, minified and cut to what the body reaches
    /// ([`shake`]): MLX hashes the whole source on every evaluation, so every byte here is
    /// paid per call.
    pub fn header(&self) -> String {
        let mut all = minify(BASE);
        for h in self.helpers {
            all.push_str(&minify(h));
        }
        shake::shake(&all, &minify(self.body))
    }

    /// The body as `mx.fast.cuda_kernel` takes it, minified.
    pub fn cuda_kernel_body(&self) -> String {
        minify(self.body)
    }
}

/// Drops comments, indentation and blank lines; keeps line structure for the preprocessor.
/// The sources contain no string literals, so `//` always starts a comment.
pub fn minify(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if !code.is_empty() {
            out.push_str(code);
            out.push('\n');
        }
    }
    out
}

/// Everything the Python layer needs to call one kernel on arrays of one signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: &'static KernelSource,
    pub template: Vec<(&'static str, TemplateArg)>,
    /// Threads, not blocks (MLX's convention).
    pub grid: [u32; 3],
    pub threadgroup: [u32; 3],
    pub output_shapes: Vec<Vec<usize>>,
    pub output_dtypes: Vec<DType>,
}

impl PartialEq for KernelSource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The largest element count a kernel indexes: they use 32-bit thread indices.
pub const MAX_ELEMENTS: usize = (i32::MAX as usize) / 2;

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub(crate) fn require_float(op: &'static str, arg: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_kernel_float() {
        Ok(())
    } else {
        Err(Error::dtype(op, arg, "float32, float16 or bfloat16", dtype))
    }
}

pub(crate) fn require_rank(
    op: &'static str,
    arg: &'static str,
    shape: &[usize],
    min: usize,
    what: &str,
) -> Result<()> {
    if shape.len() < min {
        Err(Error::shape(op, arg, what, crate::error::shape_str(shape)))
    } else {
        Ok(())
    }
}

pub(crate) fn require_size(op: &'static str, arg: &'static str, shape: &[usize]) -> Result<()> {
    let n = numel(shape);
    if n > MAX_ELEMENTS {
        Err(Error::shape(
            op,
            arg,
            format!("at most {MAX_ELEMENTS} elements"),
            format!("{n} elements"),
        ))
    } else {
        Ok(())
    }
}

/// Elements one thread moves with a 16-byte vector access.
pub(crate) fn vector_width(dtype: DType) -> usize {
    16 / dtype.size()
}

/// A 1-D launch of exactly `threads` threads (a multiple of `unit`) in equal blocks of at most
/// `max_block`: the largest multiple of `unit` that divides the thread count. No thread is
/// spare, so kernels need no bounds check and no element count. Model shapes give full
/// blocks; odd sizes get smaller ones, still correct.
pub(crate) fn exact_grid(threads: usize, unit: usize, max_block: usize) -> ([u32; 3], [u32; 3]) {
    debug_assert!(threads % unit == 0);
    if threads == 0 {
        // Empty arrays: nothing to launch (the Python layer returns empty outputs).
        return ([0, 1, 1], [unit as u32, 1, 1]);
    }
    let block = (1..=max_block / unit)
        .rev()
        .map(|m| m * unit)
        .find(|b| threads % b == 0)
        .unwrap_or(unit);
    ([threads as u32, 1, 1], [block as u32, 1, 1])
}

/// Elements per thread for a flat elementwise kernel: a 16-byte vector when the count
/// allows, else one (the launch must cover the elements exactly).
pub(crate) fn flat_width(n: usize, dtype: DType) -> usize {
    let v = vector_width(dtype);
    if n % v == 0 {
        v
    } else {
        1
    }
}

/// Every kernel in the catalog, for compile checks and caches.
pub fn catalog() -> Vec<&'static KernelSource> {
    vec![
        &glu::GLU,
        &glu::GLU_PACKED,
        &glu::GLU_BACKWARD,
        &glu::GLU_PACKED_BACKWARD,
        &dropout::DROPOUT,
        &moe_gating::MOE_GATING,
        &moe_gating::MOE_GATING_BIASED,
        &gather_add::GATHER_ADD,
        &moe_qmv::MOE_QMV_SWIGLU,
        &moe_qmv::MOE_QMV_COMBINE,
        &moe_qmv::MOE_QMV_SWIGLU_MMA,
        &moe_qmv::MOE_QMV_COMBINE_MMA,
        &qmv::QMV,
        &add_rms_norm::ADD_RMS_NORM,
        &qk_rms_norm::QK_RMS_NORM,
        &qkv_rope::QKV_ROPE,
        &qk_norm_rope::QK_NORM_ROPE,
    ]
}

/// Looks a kernel up by name.
pub fn find(name: &str) -> Option<&'static KernelSource> {
    catalog().into_iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for d in [DType::F32, DType::F16, DType::BF16, DType::U32, DType::Bool] {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("float8"), None);
    }

    #[test]
    fn catalog_names_are_unique_and_bodies_name_their_parameters() {
        let cat = catalog();
        for (i, k) in cat.iter().enumerate() {
            assert!(
                cat[i + 1..].iter().all(|o| o.name != k.name),
                "{} twice",
                k.name
            );
            assert!(
                !k.body.contains("numel"),
                "{} reads an element count",
                k.name
            );
            for p in k.inputs.iter().chain(k.outputs) {
                assert!(k.body.contains(p), "{} never uses {p}", k.name);
            }
        }
    }

    #[test]
    fn minify_keeps_code_and_preprocessor_lines() {
        let src = "// title\n#include <a.h>\n\n  int x = 1;  // why\n#pragma unroll\n";
        assert_eq!(minify(src), "#include <a.h>\nint x = 1;\n#pragma unroll\n");
        // MLX hashes a custom kernel's whole source on every evaluation (~0.27 µs per KB).
        for k in catalog() {
            assert!(
                k.header().len() + k.cuda_kernel_body().len() < 8800,
                "{}",
                k.name
            );
        }
    }

    #[test]
    fn grids_cover_the_threads_exactly() {
        assert_eq!(exact_grid(10, 1, 256), ([10, 1, 1], [10, 1, 1]));
        assert_eq!(exact_grid(1024, 1, 256), ([1024, 1, 1], [256, 1, 1]));
        assert_eq!(exact_grid(3003, 1, 256), ([3003, 1, 1], [231, 1, 1]));
        assert_eq!(exact_grid(7, 1, 256), ([7, 1, 1], [7, 1, 1]));
        assert_eq!(exact_grid(0, 32, 128).0, [0, 1, 1]);
        assert_eq!(exact_grid(96, 32, 128), ([96, 1, 1], [96, 1, 1]));
        assert_eq!(exact_grid(160, 32, 128), ([160, 1, 1], [32, 1, 1]));
        for threads in 1..2000 {
            let (g, b) = exact_grid(threads, 1, 256);
            assert_eq!(g[0] % b[0], 0);
        }
        assert_eq!(flat_width(16, DType::BF16), 8);
        assert_eq!(flat_width(12, DType::BF16), 1);
        assert_eq!(flat_width(12, DType::F32), 4);
    }
}
