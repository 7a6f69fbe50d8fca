//! Dense 4-bit quantised matrix-vector products at decode sizes: `x @ dequant(w).T` for a few
//! rows of x, with the arithmetic of MLX's own qmv kernel (the one `mx.quantized_matmul` runs
//! for one row on MLX-CUDA) so results are bit for bit MLX's, in about two thirds of its time
//! or less at the widths of 7B-30B models (its 4-bit path is bound by instruction issue, not
//! by DRAM: 24-38% of copy bandwidth on an H100). Weights are MLX affine-quantised as
//! `mx.quantize` lays them out: (N, K / 8) uint32, (N, K / group_size) scales and biases.

use super::moe_qmv::{ArraySpec, Quant, DEQUANT};
use super::{numel, DType, KernelSource, Launch, TemplateArg, WARP};
use crate::error::{shape_str, Error, Result};

pub static QMV: KernelSource = KernelSource {
    name: "zmlx_qmv",
    inputs: &["x", "w", "scales", "biases"],
    outputs: &["out"],
    helpers: &[WARP, DEQUANT],
    body: include_str!("cuda/qmv.cu"),
    launch_bounds: false,
};

/// Rows of x ride on the grid's y axis.
pub const MAX_ROWS: usize = 65_535;
// Geometry, measured on an H100 (bf16, 64 calls of distinct weights per graph; ROWS x WARPS x
// U among 1-4 x 2-8 x 4-8): each warp owns 2 rows and shares its x loads between them, 4 warps
// per block, 4 steps' loads in flight per lane. 14336x4096: 24.6 us against MLX's 35.7 us;
// 4096x14336: 22.2 against 35.3; 28672x4096: 38.4 against 66.9; 4096x4096: 13.6 against 13.9.
const ROWS: usize = 2;
const WARPS: usize = 4;
const UNROLL: usize = 4;

/// `out[..., n] = sum_k x[..., k] * (scales[n, g] * w[n, k] + biases[n, g])`, g = k / group
/// size: x (..., K) in float16 or bfloat16, w (N, K / 8) uint32 holding 4-bit values,
/// scales and biases (N, K / group_size) in x's dtype → out (..., N) in x's dtype.
pub fn plan(
    x: ArraySpec,
    w: ArraySpec,
    scales: ArraySpec,
    biases: ArraySpec,
    bits: i64,
    group_size: i64,
) -> Result<Launch> {
    const OP: &str = "qmv";
    if bits != 4 {
        return Err(Error::value(OP, "bits", "4", bits));
    }
    let gs = Quant::new(OP, bits, group_size)?.group_size;
    let (x_shape, x_dtype) = x;
    if !matches!(x_dtype, DType::F16 | DType::BF16) {
        return Err(Error::dtype(OP, "x", "float16 or bfloat16", x_dtype));
    }
    let Some((&k, lead)) = x_shape.split_last() else {
        return Err(Error::shape(OP, "x", "an array (..., K)", "()"));
    };
    let rows = numel(lead);
    if k == 0 || rows == 0 || rows > MAX_ROWS {
        return Err(Error::shape(
            OP,
            "x",
            format!("(..., K) with K > 0 and 1 to {MAX_ROWS} rows"),
            shape_str(x_shape),
        ));
    }
    if k % gs != 0 {
        return Err(Error::shape(
            OP,
            "x",
            format!("(..., K) with K a multiple of group_size {gs}"),
            shape_str(x_shape),
        ));
    }
    let (w_shape, w_dtype) = w;
    if w_dtype != DType::U32 {
        return Err(Error::dtype(
            OP,
            "w",
            "uint32 (mx.quantize output)",
            w_dtype,
        ));
    }
    if w_shape.len() != 2 || w_shape[0] == 0 || w_shape[1] != k / 8 {
        return Err(Error::shape(
            OP,
            "w",
            format!("(N, {}) for x's K = {k} at 4 bits", k / 8),
            shape_str(w_shape),
        ));
    }
    let n = w_shape[0];
    if n > i32::MAX as usize / 2 || n * k / 8 > i32::MAX as usize {
        return Err(Error::shape(
            OP,
            "w",
            "fewer than 2**31 words",
            shape_str(w_shape),
        ));
    }
    let expected = [n, k / gs];
    for (arg, (shape, dtype)) in [("scales", scales), ("biases", biases)] {
        if dtype != x_dtype {
            return Err(Error::dtype(OP, arg, x_dtype, dtype));
        }
        if shape != expected {
            return Err(Error::shape(
                OP,
                arg,
                format!("{} (w's rows, one per group)", shape_str(&expected)),
                shape_str(shape),
            ));
        }
    }
    let per_block = ROWS * WARPS;
    let threads = (WARPS * 32) as u32;
    let mut out = lead.to_vec();
    out.push(n);
    Ok(Launch {
        kernel: &QMV,
        template: vec![
            ("T", TemplateArg::DType(x_dtype)),
            ("GS", TemplateArg::Int(gs as i32)),
            ("K", TemplateArg::Int(k as i32)),
            ("N", TemplateArg::Int(n as i32)),
            ("ROWS", TemplateArg::Int(ROWS as i32)),
            ("WARPS", TemplateArg::Int(WARPS as i32)),
            ("U", TemplateArg::Int(UNROLL as i32)),
        ],
        grid: [n.div_ceil(per_block) as u32 * threads, rows as u32, 1],
        threadgroup: [threads, 1, 1],
        output_shapes: vec![out],
        output_dtypes: vec![x_dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(x: &[usize], n: usize, dtype: DType, gs: i64) -> Result<Launch> {
        let k = *x.last().unwrap();
        let groups = k / gs as usize;
        plan(
            (x, dtype),
            (&[n, k / 8], DType::U32),
            (&[n, groups], dtype),
            (&[n, groups], dtype),
            4,
            gs,
        )
    }

    #[test]
    fn geometry_covers_every_row_with_whole_blocks() {
        let l = plan_for(&[1, 4096], 14_337, DType::BF16, 64).unwrap();
        assert_eq!(l.threadgroup, [128, 1, 1]);
        assert_eq!(l.grid, [14_337usize.div_ceil(8) as u32 * 128, 1, 1]);
        assert_eq!(l.output_shapes, vec![vec![1, 14_337]]);
        let l = plan_for(&[3, 2, 544], 96, DType::F16, 32).unwrap();
        assert_eq!(l.grid[1], 6);
        assert_eq!(l.output_shapes, vec![vec![3, 2, 96]]);
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let err = |r: Result<Launch>| r.unwrap_err().to_string();
        assert!(err(plan_for(&[1, 4096], 64, DType::F32, 64)).contains("'x'"));
        assert!(err(plan_for(&[1, 4096], 64, DType::BF16, 48)).contains("'group_size'"));
        assert!(err(plan_for(&[1, 96], 64, DType::BF16, 64)).contains("multiple of group_size"));
        let x = [1usize, 4096];
        let w = [64usize, 4096 / 8];
        let sb = [64usize, 64];
        let bad_w = plan(
            (&x, DType::BF16),
            (&[64, 256], DType::U32),
            (&sb, DType::BF16),
            (&sb, DType::BF16),
            4,
            64,
        );
        assert!(err(bad_w).contains("'w'"));
        let bad_bits = plan(
            (&x, DType::BF16),
            (&w, DType::U32),
            (&sb, DType::BF16),
            (&sb, DType::BF16),
            8,
            64,
        );
        assert!(err(bad_bits).contains("'bits'"));
        let bad_scales = plan(
            (&x, DType::BF16),
            (&w, DType::U32),
            (&sb, DType::F16),
            (&sb, DType::BF16),
            4,
            64,
        );
        assert!(err(bad_scales).contains("'scales'"));
        let bad_biases = plan(
            (&x, DType::BF16),
            (&w, DType::U32),
            (&sb, DType::BF16),
            (&[64, 63], DType::BF16),
            4,
            64,
        );
        assert!(err(bad_biases).contains("'biases'"));
        assert!(err(plan_for(&[0, 4096], 64, DType::BF16, 64)).contains("rows"));
    }
}
