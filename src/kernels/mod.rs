//! The fused-kernel catalog. Each op module owns its CUDA source, decides how the source is
//! specialised (dtype, sizes fixed for a model such as hidden width or expert count), its
//! launch geometry, and the validation of its inputs. Nothing here touches MLX: the Python
//! layer hands shapes and dtypes in and gets a [`Launch`] back.

pub mod dropout;
pub mod gather_add;
pub mod glu;
pub mod moe_gating;
pub mod moe_qmv;

use crate::error::{Error, Result};
use std::fmt;

/// Device helpers shared by every kernel: float conversion and vector access.
pub const COMMON_HEADER: &str = concat!(
    include_str!("cuda/common.cuh"),
    include_str!("cuda/qmv_common.cuh")
);

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

/// One kernel of the catalog: the body MLX wraps in a generated signature, and the names of
/// its parameters. `numel_of` names the input whose element count the body reads as `numel`.
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
    pub numel_of: &'static str,
    pub body: &'static str,
}

impl KernelSource {
    /// The body as `mx.fast.cuda_kernel` takes it: a prelude that derives `numel` from the
    /// shape MLX passes for `numel_of`, then the kernel's own code.
    pub fn cuda_kernel_body(&self) -> String {
        let n = self.numel_of;
        format!(
            "  const long long numel = zm::numel({n}_shape, {n}_ndim);\n{}",
            self.body
        )
    }
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

/// A 1-D launch of `threads` threads in blocks of up to `block`.
pub(crate) fn linear_grid(threads: usize, block: u32) -> ([u32; 3], [u32; 3]) {
    let threads = threads.max(1) as u32;
    ([threads, 1, 1], [block.min(threads), 1, 1])
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
            assert!(k.inputs.contains(&k.numel_of), "{}", k.name);
            for p in k.inputs.iter().chain(k.outputs) {
                assert!(k.body.contains(p), "{} never uses {p}", k.name);
            }
        }
    }

    #[test]
    fn grids_never_exceed_the_thread_count() {
        assert_eq!(linear_grid(10, 256), ([10, 1, 1], [10, 1, 1]));
        assert_eq!(linear_grid(1000, 256), ([1000, 1, 1], [256, 1, 1]));
        assert_eq!(linear_grid(0, 256), ([1, 1, 1], [1, 1, 1]));
    }
}
