//! Decode-size quantised MoE experts in two kernels: the gate|up gather-qmv with SwiGLU, and
//! the down gather-qmv with the score-weighted combine. They replace mlx-lm's three
//! `gather_qmm`, the activation, the expand/squeeze views and the combine (about ten graph
//! nodes) when tokens * k is small. Weights are MLX affine-quantised exactly as `mx.quantize`
//! lays them out: (E, out, in * bits / 32) uint32 with (E, out, in / group_size) scales and
//! biases.

use super::{numel, require_float, require_size, DType, KernelSource, Launch, TemplateArg, WARP};
use crate::error::{shape_str, Error, Result};

/// Dequantisation and dot-product helpers both kernels share.
pub const QMV: &str = include_str!("cuda/qmv.cuh");

pub static MOE_QMV_SWIGLU: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_swiglu",
    inputs: &["x", "indices", "w", "scales", "biases"],
    outputs: &["act"],
    helpers: &[WARP, QMV],
    body: include_str!("cuda/moe_qmv_swiglu.cu"),
};

pub static MOE_QMV_COMBINE: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_combine",
    inputs: &["act", "indices", "scores", "w", "scales", "biases"],
    outputs: &["out"],
    helpers: &[WARP, QMV],
    body: include_str!("cuda/moe_qmv_combine.cu"),
};

pub const BITS: [usize; 2] = [4, 8];
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];
/// Up to 16 experts per token, as the gating kernel.
pub const MAX_K: usize = 16;
/// (token, k) pairs ride on the grid's y axis.
pub const MAX_PAIRS: usize = 65_535;
const WARPS: usize = 8;
/// The vector a block dots with stays in shared memory (fp32 plus one sum per 16-byte chunk)
/// up to this many bytes; past it, lanes read it through L1 instead.
const STAGE_BYTES: usize = 46 * 1024;

/// Quantisation of the expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quant {
    pub bits: usize,
    pub group_size: usize,
}

impl Quant {
    pub fn new(op: &'static str, bits: i64, group_size: i64) -> Result<Quant> {
        if !BITS.iter().any(|&b| b as i64 == bits) {
            return Err(Error::value(op, "bits", "4 or 8", bits));
        }
        if !GROUP_SIZES.iter().any(|&g| g as i64 == group_size) {
            return Err(Error::value(op, "group_size", "32, 64 or 128", group_size));
        }
        Ok(Quant {
            bits: bits as usize,
            group_size: group_size as usize,
        })
    }
}

/// Shape and dtype of one array argument.
pub type ArraySpec<'a> = (&'a [usize], DType);

/// The quantised expert tensors: packed weights, scales, biases.
#[derive(Debug, Clone, Copy)]
pub struct Experts<'a> {
    pub w: ArraySpec<'a>,
    pub scales: ArraySpec<'a>,
    pub biases: ArraySpec<'a>,
}

/// Checks the experts are (E, rows, cols) quantised with `q`; returns (E, rows, cols).
fn check_experts(op: &'static str, ex: &Experts, q: Quant) -> Result<(usize, usize, usize)> {
    let (w, w_dtype) = ex.w;
    if w_dtype != DType::U32 {
        return Err(Error::dtype(
            op,
            "w",
            "uint32 (mx.quantize output)",
            w_dtype,
        ));
    }
    if w.len() != 3 || w.contains(&0) {
        return Err(Error::shape(
            op,
            "w",
            "(n_experts, out, in * bits / 32), all non-empty",
            shape_str(w),
        ));
    }
    require_size(op, "w", w)?;
    let (experts, rows, words) = (w[0], w[1], w[2]);
    let cols = words * 32 / q.bits;
    if cols % q.group_size != 0 {
        return Err(Error::shape(
            op,
            "w",
            format!(
                "(n_experts, out, in * {} / 32) with in a multiple of group_size {}",
                q.bits, q.group_size
            ),
            shape_str(w),
        ));
    }
    let expected = [experts, rows, cols / q.group_size];
    for (arg, (shape, dtype)) in [("scales", ex.scales), ("biases", ex.biases)] {
        require_float(op, arg, dtype)?;
        if shape != expected {
            return Err(Error::shape(
                op,
                arg,
                format!(
                    "{} (w's experts and rows, one per group)",
                    shape_str(&expected)
                ),
                shape_str(shape),
            ));
        }
    }
    if ex.biases.1 != ex.scales.1 {
        return Err(Error::dtype(op, "biases", ex.scales.1, ex.biases.1));
    }
    Ok((experts, rows, cols))
}

fn check_indices(op: &'static str, (shape, dtype): ArraySpec, lead: &[usize]) -> Result<usize> {
    if !matches!(dtype, DType::U32 | DType::I32) {
        return Err(Error::dtype(op, "indices", "uint32 or int32", dtype));
    }
    let k = shape.last().copied().unwrap_or(0);
    if shape.len() != lead.len() + 1 || &shape[..lead.len()] != lead || k == 0 || k > MAX_K {
        return Err(Error::shape(
            op,
            "indices",
            format!("{}+(k,) with 1 <= k <= {MAX_K}", shape_str(lead)),
            shape_str(shape),
        ));
    }
    let pairs = numel(shape);
    if pairs == 0 || pairs > MAX_PAIRS {
        return Err(Error::shape(
            op,
            "indices",
            format!("between 1 and {MAX_PAIRS} (token, expert) pairs"),
            shape_str(shape),
        ));
    }
    Ok(k)
}

/// Whether a block keeps the `n`-value vector it dots with in shared memory.
fn staged(n: usize, q: Quant) -> bool {
    let chunks = n * q.bits / 128;
    (n + chunks) * 4 <= STAGE_BYTES
}

fn grid(rows: usize, rows_per_warp: usize, y: usize) -> ([u32; 3], [u32; 3]) {
    let rows_per_block = WARPS * rows_per_warp;
    let blocks = rows.div_ceil(rows_per_block);
    let threads = (WARPS * 32) as u32;
    ([blocks as u32 * threads, y as u32, 1], [threads, 1, 1])
}

/// `act[..., k, j] = silu(x . gate_j) * (x . up_j)` for expert `indices[..., k]`, where the
/// expert's rows are `[gate (I rows) | up (I rows)]`: x (..., D), indices (..., k),
/// w (E, 2I, D * bits / 32) → act (..., k, I) in x's dtype.
pub fn plan_swiglu(
    x: ArraySpec,
    indices: ArraySpec,
    experts: Experts,
    bits: i64,
    group_size: i64,
) -> Result<Launch> {
    const OP: &str = "gather_qmv_swiglu";
    let q = Quant::new(OP, bits, group_size)?;
    let (x_shape, x_dtype) = x;
    require_float(OP, "x", x_dtype)?;
    if x_shape.is_empty() {
        return Err(Error::shape(
            OP,
            "x",
            "an array (..., D)",
            shape_str(x_shape),
        ));
    }
    let (lead, d) = x_shape.split_at(x_shape.len() - 1);
    let d = d[0];
    let k = check_indices(OP, indices, lead)?;
    let (n_experts, rows, cols) = check_experts(OP, &experts, q)?;
    if cols != d {
        return Err(Error::shape(
            OP,
            "w",
            format!("(n_experts, 2 * I, {}) for x's D = {d}", d * q.bits / 32),
            shape_str(experts.w.0),
        ));
    }
    if rows % 2 != 0 {
        return Err(Error::shape(
            OP,
            "w",
            "(n_experts, 2 * I, ...): gate and up rows stacked",
            shape_str(experts.w.0),
        ));
    }
    let inter = rows / 2;
    let pairs = numel(indices.0);
    const R: usize = 2;
    let (grid, threadgroup) = grid(inter, R, pairs);
    let mut out = indices.0.to_vec();
    out.push(inter);
    Ok(Launch {
        kernel: &MOE_QMV_SWIGLU,
        template: vec![
            ("T", TemplateArg::DType(x_dtype)),
            ("S", TemplateArg::DType(experts.scales.1)),
            ("BITS", TemplateArg::Int(q.bits as i32)),
            ("GS", TemplateArg::Int(q.group_size as i32)),
            ("D", TemplateArg::Int(d as i32)),
            ("I", TemplateArg::Int(inter as i32)),
            ("K", TemplateArg::Int(k as i32)),
            ("E", TemplateArg::Int(n_experts as i32)),
            ("R", TemplateArg::Int(R as i32)),
            ("WARPS", TemplateArg::Int(WARPS as i32)),
            ("XS", TemplateArg::Bool(staged(d, q))),
        ],
        grid,
        threadgroup,
        output_shapes: vec![out],
        output_dtypes: vec![x_dtype],
    })
}

/// `out[..., d] = sum_k scores[..., k] * (act[..., k, :] . down_d)` of expert
/// `indices[..., k]`, fp32 accumulation: act (..., k, I), w (E, D, I * bits / 32) →
/// out (..., D) in act's dtype.
pub fn plan_combine(
    act: ArraySpec,
    indices: ArraySpec,
    scores: ArraySpec,
    experts: Experts,
    bits: i64,
    group_size: i64,
) -> Result<Launch> {
    const OP: &str = "gather_qmv_combine";
    let q = Quant::new(OP, bits, group_size)?;
    let (a_shape, a_dtype) = act;
    require_float(OP, "act", a_dtype)?;
    if a_shape.len() < 2 {
        return Err(Error::shape(
            OP,
            "act",
            "an array (..., k, I) with at least 2 dimensions",
            shape_str(a_shape),
        ));
    }
    let (lead, rest) = a_shape.split_at(a_shape.len() - 2);
    let inter = rest[1];
    let k = check_indices(OP, indices, lead)?;
    if k != rest[0] {
        return Err(Error::shape(
            OP,
            "indices",
            format!(
                "{}+({},) (act's shape without its last axis)",
                shape_str(lead),
                rest[0]
            ),
            shape_str(indices.0),
        ));
    }
    let (s_shape, s_dtype) = scores;
    require_float(OP, "scores", s_dtype)?;
    if s_shape != indices.0 {
        return Err(Error::shape(
            OP,
            "scores",
            format!("{} (indices' shape)", shape_str(indices.0)),
            shape_str(s_shape),
        ));
    }
    let (n_experts, d, cols) = check_experts(OP, &experts, q)?;
    if cols != inter {
        return Err(Error::shape(
            OP,
            "w",
            format!(
                "(n_experts, D, {}) for act's I = {inter}",
                inter * q.bits / 32
            ),
            shape_str(experts.w.0),
        ));
    }
    let tokens = numel(lead);
    if tokens == 0 || tokens > MAX_PAIRS {
        return Err(Error::shape(
            OP,
            "act",
            format!("between 1 and {MAX_PAIRS} tokens"),
            shape_str(a_shape),
        ));
    }
    // One token leaves few blocks: a warp per output row keeps every SM streaming.
    let r = if tokens * d >= 8192 { 2 } else { 1 };
    let (grid, threadgroup) = grid(d, r, tokens);
    let mut out = lead.to_vec();
    out.push(d);
    Ok(Launch {
        kernel: &MOE_QMV_COMBINE,
        template: vec![
            ("T", TemplateArg::DType(a_dtype)),
            ("S", TemplateArg::DType(experts.scales.1)),
            ("BITS", TemplateArg::Int(q.bits as i32)),
            ("GS", TemplateArg::Int(q.group_size as i32)),
            ("D", TemplateArg::Int(d as i32)),
            ("I", TemplateArg::Int(inter as i32)),
            ("K", TemplateArg::Int(k as i32)),
            ("E", TemplateArg::Int(n_experts as i32)),
            ("R", TemplateArg::Int(r as i32)),
            ("WARPS", TemplateArg::Int(WARPS as i32)),
            ("XS", TemplateArg::Bool(staged(k * inter, q))),
        ],
        grid,
        threadgroup,
        output_shapes: vec![out],
        output_dtypes: vec![a_dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experts<'a>(w: &'a [usize], s: &'a [usize], dt: DType) -> Experts<'a> {
        Experts {
            w: (w, DType::U32),
            scales: (s, dt),
            biases: (s, dt),
        }
    }

    fn template(l: &Launch, name: &str) -> TemplateArg {
        l.template.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn qwen3_30b_a3b_decode_shapes() {
        // D = 2048, I = 768, E = 128, k = 8, 4-bit, group 64.
        let l = plan_swiglu(
            (&[1, 1, 2048], DType::BF16),
            (&[1, 1, 8], DType::U32),
            experts(&[128, 1536, 256], &[128, 1536, 32], DType::BF16),
            4,
            64,
        )
        .unwrap();
        assert_eq!(l.output_shapes, vec![vec![1, 1, 8, 768]]);
        assert_eq!(l.grid, [48 * 256, 8, 1]);
        assert_eq!(template(&l, "XS"), TemplateArg::Bool(true));
        let l = plan_combine(
            (&[1, 1, 8, 768], DType::BF16),
            (&[1, 1, 8], DType::U32),
            (&[1, 1, 8], DType::BF16),
            experts(&[128, 2048, 96], &[128, 2048, 12], DType::BF16),
            4,
            64,
        )
        .unwrap();
        assert_eq!(l.output_shapes, vec![vec![1, 1, 2048]]);
        assert_eq!(l.grid, [256 * 256, 1, 1]);
        assert_eq!(template(&l, "R"), TemplateArg::Int(1));
    }

    #[test]
    fn large_vectors_are_read_through_l1() {
        // Mixtral: k = 2, I = 14336: 112 KiB of activations per token.
        let l = plan_combine(
            (&[1, 2, 14336], DType::F16),
            (&[1, 2], DType::I32),
            (&[1, 2], DType::F32),
            experts(&[8, 4096, 1792], &[8, 4096, 448], DType::F16),
            4,
            32,
        )
        .unwrap();
        assert_eq!(template(&l, "XS"), TemplateArg::Bool(false));
        assert_eq!(template(&l, "R"), TemplateArg::Int(1));
    }

    #[test]
    fn bad_arguments_are_named() {
        let s = [8, 64, 2];
        let e = experts(&[8, 64, 16], &s, DType::F32);
        let x: ArraySpec = (&[3, 128], DType::F32);
        let idx: ArraySpec = (&[3, 2], DType::U32);
        let cases: Vec<(Result<Launch>, &str)> = vec![
            (plan_swiglu(x, idx, e, 3, 64), "bits"),
            (plan_swiglu(x, idx, e, 4, 16), "group_size"),
            (plan_swiglu((&[3, 128], DType::I32), idx, e, 4, 64), "x"),
            (plan_swiglu((&[3, 256], DType::F32), idx, e, 4, 64), "w"),
            (plan_swiglu(x, (&[4, 2], DType::U32), e, 4, 64), "indices"),
            (plan_swiglu(x, (&[3, 2], DType::F32), e, 4, 64), "indices"),
            (plan_swiglu(x, (&[3, 17], DType::U32), e, 4, 64), "indices"),
            (
                plan_swiglu(
                    x,
                    idx,
                    experts(&[8, 64, 16], &[8, 64, 4], DType::F32),
                    4,
                    64,
                ),
                "scales",
            ),
            (
                plan_swiglu(
                    x,
                    idx,
                    Experts {
                        biases: (&s, DType::F16),
                        ..e
                    },
                    4,
                    64,
                ),
                "biases",
            ),
            (
                plan_swiglu(
                    x,
                    idx,
                    Experts {
                        w: (&[8, 64, 16], DType::I32),
                        ..e
                    },
                    4,
                    64,
                ),
                "w",
            ),
            (
                plan_swiglu(
                    x,
                    idx,
                    experts(&[8, 63, 16], &[8, 63, 2], DType::F32),
                    4,
                    64,
                ),
                "w",
            ),
            (
                plan_combine(
                    (&[3, 2, 32], DType::F32),
                    idx,
                    (&[3, 3], DType::F32),
                    experts(&[8, 128, 4], &[8, 128, 1], DType::F32),
                    4,
                    32,
                ),
                "scores",
            ),
            (
                plan_combine(
                    (&[3, 2, 32], DType::F32),
                    idx,
                    (&[3, 2], DType::F32),
                    experts(&[8, 128, 8], &[8, 128, 2], DType::F32),
                    4,
                    32,
                ),
                "w",
            ),
            (
                plan_combine(
                    (&[3, 4, 32], DType::F32),
                    idx,
                    (&[3, 2], DType::F32),
                    experts(&[8, 128, 4], &[8, 128, 1], DType::F32),
                    4,
                    32,
                ),
                "indices",
            ),
        ];
        for (r, arg) in cases {
            let e = r.unwrap_err();
            assert!(e.to_string().contains(&format!("'{arg}'")), "{arg}: {e}");
        }
    }
}
