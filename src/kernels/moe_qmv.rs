//! Decode-size quantised MoE experts in two kernels: the gate|up gather-qmv with SwiGLU, and
//! the down gather-qmv with the score-weighted combine. They replace mlx-lm's three
//! `gather_qmm`, the activation, the expand/squeeze views and the combine (about ten graph
//! nodes) when tokens * k is small. Weights are MLX affine-quantised exactly as `mx.quantize`
//! lays them out: (E, out, in * bits / 32) uint32 with (E, out, in / group_size) scales and
//! biases.

use super::{
    numel, require_float, require_size, DType, KernelSource, Launch, TemplateArg, MLX_SILU, WARP,
};
use crate::error::{shape_str, Error, Result};

/// Dequantisation of two values at once in the activation dtype, as MLX does it.
pub const DEQUANT: &str = include_str!("cuda/dequant.cuh");
/// The fp32 dot products of the CUDA-core kernels.
pub const QMV: &str = include_str!("cuda/qmv.cuh");
/// The tensor-core dot products, in the order of MLX's qmm_sm80.
pub const MMA: &str = include_str!("cuda/mma.cuh");

pub static MOE_QMV_SWIGLU: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_swiglu",
    inputs: &["x", "indices", "w", "scales", "biases"],
    outputs: &["act"],
    helpers: &[WARP, DEQUANT, QMV, MLX_SILU],
    body: include_str!("cuda/moe_qmv_swiglu.cu"),
    launch_bounds: false,
};

pub static MOE_QMV_COMBINE: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_combine",
    inputs: &["act", "indices", "scores", "w", "scales", "biases"],
    outputs: &["out"],
    helpers: &[WARP, DEQUANT, QMV],
    body: include_str!("cuda/moe_qmv_combine.cu"),
    launch_bounds: false,
};

pub static MOE_QMV_SWIGLU_MMA: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_swiglu_mma",
    inputs: &["x", "indices", "w", "scales", "biases"],
    outputs: &["act"],
    helpers: &[DEQUANT, MMA, MLX_SILU],
    body: include_str!("cuda/moe_qmv_swiglu_mma.cu"),
    launch_bounds: true,
};

pub static MOE_QMV_COMBINE_MMA: KernelSource = KernelSource {
    name: "zmlx_moe_qmv_combine_mma",
    inputs: &["act", "indices", "scores", "w", "scales", "biases"],
    outputs: &["out"],
    helpers: &[DEQUANT, MMA],
    body: include_str!("cuda/moe_qmv_combine_mma.cu"),
    launch_bounds: true,
};

pub const BITS: [usize; 2] = [4, 8];
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];
/// Up to 16 experts per token, as the gating kernel.
pub const MAX_K: usize = 16;
/// (token, k) pairs ride on the grid's y axis.
pub const MAX_PAIRS: usize = 65_535;
// Geometry (both kernels): a block owns a few output rows of one (token, k) pair or token and
// splits their dot products' 16-byte weight chunks over its threads (split-K); each thread
// loads the matching x chunk once, straight from global memory, keeps it in registers and
// reuses it for every row of the block, then the block adds its warps' partial sums in shared
// memory. The first design gave each warp its own rows and staged x in shared memory per
// block: at one token that re-read x from shared memory per row (fp32, 8x the weight bytes),
// and the combine staged all K * I activations (24 KiB at Qwen3-30B-A3B) in each block for 8
// output rows, a staging pass as long as the work, behind a barrier; on an H200 the kernels
// reached 35% (swiglu) and 16% (combine) of copy bandwidth at that shape. Now x costs one
// L1/L2 read per block, each thread issues all of a step's loads before their first use (one
// DRAM latency per step, no barrier before the arithmetic), and dequantisation runs on pairs
// of values in T (dequant.cuh, as MLX rounds it). At Qwen3-30B-A3B one token gives the
// swiglu 1536 blocks of 2 warps (4 gate + 4 up rows each) and the combine 256 blocks of 8
// warps (8 outputs, one warp per expert: 24 of its lanes have a chunk); each thread has 8
// chunks (128 B) of weights in flight, about 48-94 KB per SM, more than DRAM latency needs.
// Measured (H100, ncu, caches flushed): swiglu 11.5 us and combine 9.0 us for 14.2 and 7.1 MB
// of weights, against 10.4 and 6.6 us for a plain copy kernel reading as much: both kernels
// are bound by DRAM latency and launch at this size, not by their arithmetic. The combine
// reduces each expert's rows apart (combine_warps_per_expert) to round them as the unfused
// path does (benchmarks/moe_qmv.py on H100s, separate runs, not an A/B: 11.3 us per call
// against 7.7-11.7 us for the earlier split-K combine that mixed experts in one sum).
// Where MLX's own gather_qmm runs its tensor-core kernel (qmm_sm80: half or bfloat16, at least
// 8 (token, expert) rows, out features a multiple of 128, in features a multiple of
// max(64, group_size)), its numbers come from the tensor cores' rounding, which fp32 fmas do
// not reproduce (a random-weight Qwen3-30B-A3B's greedy tokens drifted from the unfused
// model's after ~20 steps). There the _mma kernels run the same mma.sync steps instead
// (mma.cuh): a warp owns 16 rows of one expert and runs their D / 16 steps in order, reading
// only shared memory (x and the scales staged by asynchronous copies, the weights through a
// ring of parts, a few in flight at a time). Each output is one chain of dependent steps, so
// what bounds these kernels is how soon each warp's chain starts and how fast its steps
// issue: the first version read x and the scales from global memory inside the steps and
// requested all weights up front, and took 38 us (ncu, H100) for the Qwen3-30B-A3B gate|up at
// 11% of DRAM bandwidth; staging, leaner steps and parts in flight took it to 11 us, and
// 16 weight rows rather than 16 copies of x in the mma's A operand, streamed in finer parts,
// to 10.2 us (kernel time, interleaved against the 8-row kernel; the combine 6.35 -> 5.7 us).
// Probed there and left: more parts in flight (8-row warps with all 8 parts in flight:
// 11.3 us), the rows prefetched to L2 in bulk first (12.9 us), x permuted into the slots'
// order while staging (10.4 us). Without the dequantisation and the mma steps the same loads
// take 7.1 us (combine 4.8 us). The SASS then showed where the rest went: ptxas emitted the
// dequantisation's mask-then-magic as two logic ops (one immediate per op), a sixth of a
// step's ~28 instructions, and each warp's steps ran load -> dequantise -> mma with little
// overlap (ncu, combine: 2 warps per scheduler, none eligible 59% of cycles). One lop3 via
// asm (dequant.cuh's and_or) and one 16-byte load per row per two 4-bit steps, with the
// planner's parts and parts in flight sized in bytes (MMA_PART_BYTES, MMA_FLIGHT_BYTES):
// gate|up 10.25 -> 9.22 us (51% of the copy kernel; 50% once the benchmark read every call's
// experts from HBM, not partly from L2: README), combine 5.88 -> 5.55 us, GLM-4.5-Air's
// gate|up 36.2 -> 29.1 us and its combine, which now fits the tensor-core kernel in 22 parts
// of one group, 22.3 us (split-K) -> 15.5 us (H100, one process, 5 interleaved rounds, kernel
// times; benchmarks/results/moe_qmv-ab-h100-20261207b.json). Software-pipelining a whole
// group's shared-memory loads ahead of its steps on top gained under 1%. Elsewhere MLX runs
// an fp32 qmv and the split-K kernels below keep its dequantisation (dequant.cuh; and_or
// there too: Mixtral-8x7B's 58.5 -> 56.4 and 53.6 -> 52.4 us).
/// Static shared memory a block may use.
const MMA_SMEM: usize = 48 * 1024;
/// A warp's 16 rows are copied in parts of about MMA_PART_BYTES (whole groups; at most
/// MMA_PARTS parts unless smaller parts are what fits), with up to MMA_FLIGHT_BYTES (at most
/// MMA_AHEAD parts) in flight beside the part being reduced. Swept on an H100
/// (moe_qmv.py --sweep, benchmarks/results/moe_qmv-sweep-h100-20261207.json, and the probes in
/// the comment above): Qwen3-30B-A3B's gate|up was fastest with 1 KiB parts and 4 KiB in
/// flight, its combine with 1 KiB parts and 3 KiB (which passed 48 KiB while each warp's
/// activations were staged whole; with them in the ring it runs 1 KiB parts, 2 KiB in flight,
/// 1.04x faster than the 512-byte parts, 1.5 KiB in flight, that fitted before:
/// moe_qmv-ab-h100-20261207c.json); GLM-4.5-Air's gate|up (2 KiB parts, 16 of them) 1.2x
/// faster with 4 KiB in flight than with 8, where its blocks no longer all fit on the device
/// at once.
const MMA_PART_BYTES: usize = 1024;
const MMA_FLIGHT_BYTES: usize = 4096;
const MMA_PARTS: usize = 16;
const MMA_AHEAD: usize = 4;

/// Shared memory one warp of an _mma kernel stages (zm::MmaStage): a ring of parts of 16
/// weight rows over `n_in` inputs, each row padded by 16 bytes, with the part's values of the
/// vector (two bytes each) if `ring_v`, and the rows' scales and biases (two bytes each).
fn mma_stage_bytes(q: Quant, n_in: usize, parts: usize, ahead: usize, ring_v: bool) -> usize {
    let groups = n_in / q.group_size;
    let per_part = groups.div_ceil(parts);
    let group_bytes = q.group_size * q.bits / 8;
    let v_bytes = if ring_v {
        per_part * q.group_size * 2
    } else {
        0
    };
    let slots = (ahead + 1).min(parts);
    slots * (16 * (per_part * group_bytes + 16) + v_bytes) + 2 * 16 * groups * 2
}

/// The ring of an _mma kernel whose blocks have `warps` warps (each staging its own vector in
/// its ring if `ring_v`) beside `fixed` bytes of other shared memory: (parts, parts in
/// flight), the most bytes in flight (up to MMA_FLIGHT_BYTES) that fit with parts of about
/// MMA_PART_BYTES or smaller, the larger parts on a tie; None if nothing fits.
fn mma_ring(
    q: Quant,
    n_in: usize,
    warps: usize,
    ring_v: bool,
    fixed: usize,
) -> Option<(usize, usize)> {
    let groups = n_in / q.group_size;
    let group_bytes = 16 * q.group_size * q.bits / 8; // of the warp's 16 rows
    let first = (groups * group_bytes)
        .div_ceil(MMA_PART_BYTES)
        .clamp(1, groups.min(MMA_PARTS));
    let mut best: Option<(usize, usize, usize)> = None; // (bytes in flight, parts, ahead)
    for parts in first..=groups {
        let part = groups.div_ceil(parts) * group_bytes;
        let most = (MMA_FLIGHT_BYTES / part).clamp(1, MMA_AHEAD.min(parts));
        let fits = (1..=most)
            .rev()
            .find(|&a| warps * mma_stage_bytes(q, n_in, parts, a, ring_v) + fixed <= MMA_SMEM);
        if let Some(a) = fits {
            let flight = (a * part).min(MMA_FLIGHT_BYTES);
            if best.is_none_or(|(f, _, _)| flight > f) {
                best = Some((flight, parts, a));
            }
        }
    }
    best.map(|(_, parts, a)| (parts, a))
}

/// Whether MLX's gather_qmm uses qmm_sm80 for `rows` (token, expert) rows of `n` outputs over
/// `n_in` inputs.
fn mlx_uses_mma(
    dtype: DType,
    experts: &Experts,
    q: Quant,
    rows: usize,
    (n, n_in): (usize, usize),
) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
        && experts.scales.1 == dtype
        && rows >= 8
        && n % 128 == 0
        && n_in % q.group_size.max(64) == 0
}

/// Threads per block are a multiple of 32 up to this many warps, sized so that the reduction's
/// chunks are spread as evenly as the warp granularity allows.
const MAX_WARPS: usize = 8;
/// Most output rows a block owns: each thread keeps this many 16-byte weight chunks (plus
/// their scales and biases) in flight, which is enough to cover DRAM latency.
const MAX_BLOCK_ROWS: usize = 8;
/// Blocks a launch keeps if it can, by giving each block fewer rows: two per SM of a 132-SM
/// H100/H200 (within a few percent), so that a single decode token still fills the device.
const MIN_BLOCKS: usize = 256;

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

/// Warps per block for a reduction over `chunks` 16-byte chunks: as few steps as
/// MAX_WARPS allows, then as few warps as cover them in that many steps (Mixtral's 896 chunks
/// take 4 steps of 7 warps rather than 4 steps of 8 with half of the last idle).
fn warps_for(chunks: usize) -> usize {
    let steps = chunks.div_ceil(MAX_WARPS * 32);
    chunks.div_ceil(32 * steps)
}

/// Warps per expert in the combine, which reduces each expert's rows apart (to round them
/// as the unfused path does): an equal share of MAX_WARPS, at least one, no more than the
/// expert's `chunks` 16-byte chunks per row need.
fn combine_warps_per_expert(k: usize, chunks: usize) -> usize {
    (MAX_WARPS / k).max(1).min(chunks.div_ceil(32))
}

/// Rows per block: the most (a power of two up to `max_rows`) that still leave MIN_BLOCKS
/// blocks for `rows` rows of each of `y` (token or pair) slices.
fn rows_per_block(rows: usize, y: usize, max_rows: usize) -> usize {
    let mut r = max_rows;
    while r > 1 && rows.div_ceil(r) * y < MIN_BLOCKS {
        r /= 2;
    }
    r
}

fn grid(rows: usize, rows_per_block: usize, warps: usize, y: usize) -> ([u32; 3], [u32; 3]) {
    let blocks = rows.div_ceil(rows_per_block);
    let threads = (warps * 32) as u32;
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
    let mut out = indices.0.to_vec();
    out.push(inter);
    let mut template = vec![
        ("T", TemplateArg::DType(x_dtype)),
        ("S", TemplateArg::DType(experts.scales.1)),
        ("BITS", TemplateArg::Int(q.bits as i32)),
        ("GS", TemplateArg::Int(q.group_size as i32)),
        ("D", TemplateArg::Int(d as i32)),
        ("I", TemplateArg::Int(inter as i32)),
        ("K", TemplateArg::Int(k as i32)),
        ("E", TemplateArg::Int(n_experts as i32)),
    ];
    // A gate warp and an up warp beside x (two bytes a value) and their 2 x 16 results.
    let ring = mma_ring(q, d, 2, false, 2 * d + 2 * 16 * 4);
    if let Some((parts, ahead)) =
        ring.filter(|_| mlx_uses_mma(x_dtype, &experts, q, pairs, (inter, d)))
    {
        template.push(("PARTS", TemplateArg::Int(parts as i32)));
        template.push(("AHEAD", TemplateArg::Int(ahead as i32)));
        // Blocks of 2 warps: 16 gate rows, the 16 matching up rows.
        return Ok(Launch {
            kernel: &MOE_QMV_SWIGLU_MMA,
            template,
            grid: [(inter / 16 * 64) as u32, pairs as u32, 1],
            threadgroup: [64, 1, 1],
            output_shapes: vec![out],
            output_dtypes: vec![x_dtype],
        });
    }
    // A block's rows are JB gate rows and the JB matching up rows.
    let jb = rows_per_block(inter, pairs, MAX_BLOCK_ROWS / 2);
    let warps = warps_for(d * q.bits / 128);
    let (grid, threadgroup) = grid(inter, jb, warps, pairs);
    template.push(("JB", TemplateArg::Int(jb as i32)));
    template.push(("WARPS", TemplateArg::Int(warps as i32)));
    Ok(Launch {
        kernel: &MOE_QMV_SWIGLU,
        template,
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
    let mut out = lead.to_vec();
    out.push(d);
    let mut template = vec![
        ("T", TemplateArg::DType(a_dtype)),
        ("S", TemplateArg::DType(experts.scales.1)),
        ("BITS", TemplateArg::Int(q.bits as i32)),
        ("GS", TemplateArg::Int(q.group_size as i32)),
        ("D", TemplateArg::Int(d as i32)),
        ("I", TemplateArg::Int(inter as i32)),
        ("K", TemplateArg::Int(k as i32)),
        ("E", TemplateArg::Int(n_experts as i32)),
    ];
    let scores_dtype = ("SC", TemplateArg::DType(s_dtype));
    // k warps, each staging its expert's activations in its ring, beside their k x 16
    // products.
    let ring = mma_ring(q, inter, k, true, k * 16 * 4);
    if let Some((parts, ahead)) =
        ring.filter(|_| mlx_uses_mma(a_dtype, &experts, q, tokens * k, (d, inter)))
    {
        template.push(scores_dtype);
        template.push(("PARTS", TemplateArg::Int(parts as i32)));
        template.push(("AHEAD", TemplateArg::Int(ahead as i32)));
        // Blocks of k warps: expert k's 16 rows each.
        return Ok(Launch {
            kernel: &MOE_QMV_COMBINE_MMA,
            template,
            grid: [(d / 16 * k * 32) as u32, tokens as u32, 1],
            threadgroup: [(k * 32) as u32, 1, 1],
            output_shapes: vec![out],
            output_dtypes: vec![a_dtype],
        });
    }
    let rb = rows_per_block(d, tokens, MAX_BLOCK_ROWS);
    let warps = k * combine_warps_per_expert(k, inter * q.bits / 128);
    let (grid, threadgroup) = grid(d, rb, warps, tokens);
    template.push(("RB", TemplateArg::Int(rb as i32)));
    template.push(("WARPS", TemplateArg::Int(warps as i32)));
    template.push(scores_dtype);
    Ok(Launch {
        kernel: &MOE_QMV_COMBINE,
        template,
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

    fn template_of(l: &Launch, name: &str) -> Option<TemplateArg> {
        l.template.iter().find(|(n, _)| *n == name).map(|x| x.1)
    }

    fn template(l: &Launch, name: &str) -> TemplateArg {
        template_of(l, name).unwrap()
    }

    /// An _mma launch's ring (parts, parts in flight); None for the split-K kernels.
    fn ring(l: &Launch) -> Option<(i32, i32)> {
        match (template_of(l, "PARTS")?, template_of(l, "AHEAD")?) {
            (TemplateArg::Int(p), TemplateArg::Int(a)) => Some((p, a)),
            _ => None,
        }
    }

    #[test]
    fn qwen3_30b_a3b_decode_shapes() {
        // D = 2048, I = 768, E = 128, k = 8, 4-bit, group 64: MLX runs qmm_sm80 (8 pairs, out
        // features multiples of 128), so do we.
        let gate_up = || experts(&[128, 1536, 256], &[128, 1536, 32], DType::BF16);
        let l = plan_swiglu(
            (&[1, 1, 2048], DType::BF16),
            (&[1, 1, 8], DType::U32),
            gate_up(),
            4,
            64,
        )
        .unwrap();
        assert_eq!(l.kernel.name, "zmlx_moe_qmv_swiglu_mma");
        assert_eq!(l.output_shapes, vec![vec![1, 1, 8, 768]]);
        // Blocks of 2 warps (16 gate rows, 16 up rows): 48 per pair. 32 groups a row in 16
        // parts, 4 in flight (2 x 8.25 KiB of ring and scales, 4 KiB of x).
        assert_eq!(l.grid, [48 * 64, 8, 1]);
        assert_eq!(l.threadgroup, [64, 1, 1]);
        assert_eq!(ring(&l), Some((16, 4)));
        let l = plan_combine(
            (&[1, 1, 8, 768], DType::BF16),
            (&[1, 1, 8], DType::U32),
            (&[1, 1, 8], DType::BF16),
            experts(&[128, 2048, 96], &[128, 2048, 12], DType::BF16),
            4,
            64,
        )
        .unwrap();
        assert_eq!(l.kernel.name, "zmlx_moe_qmv_combine_mma");
        assert_eq!(l.output_shapes, vec![vec![1, 1, 2048]]);
        // 16 outputs per block, one warp per expert: 128 blocks. Each warp's activations ride
        // in its ring: 1 KiB parts (6 of 2 groups) fit 2 in flight (8 x 5.25 KiB), as many
        // bytes as 12 parts of 512 B with 4 in flight; the larger parts win the tie.
        assert_eq!(l.grid, [128 * 256, 1, 1]);
        assert_eq!(l.threadgroup, [256, 1, 1]);
        assert_eq!(ring(&l), Some((6, 2)));
        // Fewer than 8 pairs, fp32, or scales in another dtype: MLX's qmv, our split-K kernels.
        for (idx, x_dt, e) in [
            (&[1, 1, 4][..], DType::BF16, gate_up()),
            (
                &[1, 1, 8],
                DType::F32,
                experts(&[128, 1536, 256], &[128, 1536, 32], DType::F32),
            ),
            (
                &[1, 1, 8],
                DType::BF16,
                experts(&[128, 1536, 256], &[128, 1536, 32], DType::F16),
            ),
        ] {
            let l = plan_swiglu((&[1, 1, 2048], x_dt), (idx, DType::U32), e, 4, 64).unwrap();
            assert_eq!(l.kernel.name, "zmlx_moe_qmv_swiglu");
            // 4 gate + 4 up rows per block, 64 chunks a row over 2 warps.
            assert_eq!(template(&l, "JB"), TemplateArg::Int(4));
            assert_eq!(template(&l, "WARPS"), TemplateArg::Int(2));
        }
    }

    /// The kernels the planners pick for one bf16 token, k experts of E, 4-bit, group 64, with
    /// their rings (parts, parts in flight) where they are _mma kernels.
    fn picked(
        k: usize,
        d: usize,
        inter: usize,
        e: usize,
    ) -> [(&'static str, Option<(i32, i32)>); 2] {
        let (g, p) = (d / 64, d / 8);
        let up = plan_swiglu(
            (&[1, d], DType::BF16),
            (&[1, k], DType::U32),
            experts(&[e, 2 * inter, p], &[e, 2 * inter, g], DType::BF16),
            4,
            64,
        )
        .unwrap();
        let (g, p) = (inter / 64, inter / 8);
        let down = plan_combine(
            (&[1, k, inter], DType::BF16),
            (&[1, k], DType::U32),
            (&[1, k], DType::BF16),
            experts(&[e, d, p], &[e, d, g], DType::BF16),
            4,
            64,
        )
        .unwrap();
        [up, down].map(|l| (l.kernel.name, ring(&l)))
    }

    #[test]
    fn tensor_core_kernels_only_where_their_staging_fits() {
        // Even with one part in flight: 8 experts of Mixtral-size rows (8 warps x 14 KiB of
        // scales and biases alone, 224 KiB of activations), and gate|up at D = 16384 (32 KiB
        // of x, 2 warps x 16 KiB of scales and biases), exceed 48 KiB.
        assert_eq!(picked(8, 4096, 14336, 8)[1], ("zmlx_moe_qmv_combine", None));
        assert_eq!(picked(8, 16384, 1024, 16)[0], ("zmlx_moe_qmv_swiglu", None));
        // Where 1 KiB parts do not fit, smaller ones: gate|up at D = 8192 in 32 parts of
        // 2 KiB, 2 in flight (64 parts of 1 KiB, 4 in flight, move as much); GLM-4.5-Air
        // (D = 4096, I = 1408, k = 8): gate|up in 16 parts of 2 KiB (at most 16), 2 in flight;
        // its combine, 8 warps each with its activations in its ring, 11 parts of 1 KiB, 2 in
        // flight.
        assert_eq!(
            picked(8, 8192, 1024, 16)[0],
            ("zmlx_moe_qmv_swiglu_mma", Some((32, 2)))
        );
        assert_eq!(
            picked(8, 4096, 1408, 128),
            [
                ("zmlx_moe_qmv_swiglu_mma", Some((16, 2))),
                ("zmlx_moe_qmv_combine_mma", Some((11, 2)))
            ]
        );
    }

    #[test]
    fn small_launches_give_blocks_fewer_rows() {
        // 3 pairs of I = 128: 4 outputs per block would leave 96 blocks.
        let l = plan_swiglu(
            (&[1, 384], DType::F32),
            (&[1, 3], DType::U32),
            experts(&[16, 256, 48], &[16, 256, 12], DType::F32),
            4,
            32,
        )
        .unwrap();
        assert_eq!(template(&l, "JB"), TemplateArg::Int(1));
        assert_eq!(template(&l, "WARPS"), TemplateArg::Int(1));
        assert_eq!(l.grid, [128 * 32, 3, 1]);
    }

    #[test]
    fn long_reductions_take_several_steps() {
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
        // 448 chunks per expert row over 4 warps each: 4 steps; 512 blocks of 8 outputs.
        assert_eq!(template(&l, "WARPS"), TemplateArg::Int(8));
        assert_eq!(template(&l, "RB"), TemplateArg::Int(8));
        assert_eq!(l.grid, [512 * 256, 1, 1]);
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
