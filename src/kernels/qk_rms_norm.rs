//! Per-head RMSNorms of q and k straight from a fused q|k|v projection (qwen3's attention):
//! mlx-lm splits the projection, reshapes q, k and v into heads and runs `q_norm` and `k_norm`
//! (two kernel nodes, each after a copy MLX makes of the strided split, plus four view nodes);
//! this is one node with three outputs and MLX-CUDA's RMSNorm arithmetic (see the kernel).

use super::{
    numel, require_float, vector_width, DType, KernelSource, Launch, TemplateArg, RMS, WARP,
};
use crate::error::{shape_str, Error, Result};

pub static QK_RMS_NORM: KernelSource = KernelSource {
    name: "zmlx_qk_rms_norm",
    inputs: &["qkv", "q_w", "k_w"],
    outputs: &["q_out", "k_out", "v_out"],
    helpers: &[WARP, RMS],
    body: include_str!("cuda/qk_rms_norm.cu"),
    launch_bounds: false,
};

const OP: &str = "qk_rms_norm";

/// The widest head the kernel takes: MLX's RMSNorm then sums it in its first warp alone.
pub fn max_head(dtype: DType) -> usize {
    32 * vector_width(dtype)
}

/// The head counts, both >= 1.
pub(super) fn head_counts(
    op: &'static str,
    n_heads: i64,
    n_kv_heads: i64,
) -> Result<(usize, usize)> {
    for (arg, n) in [("n_heads", n_heads), ("n_kv_heads", n_kv_heads)] {
        if n < 1 {
            return Err(Error::value(op, arg, ">= 1", n));
        }
    }
    Ok((n_heads as usize, n_kv_heads as usize))
}

/// The head size D of per-head norm weights q_w and k_w: (D,) each, in `dtype`, D no wider
/// than the kernels' one warp per head takes.
pub(super) fn head_weights(
    op: &'static str,
    q_w: (&[usize], DType),
    k_w: (&[usize], DType),
    dtype: DType,
) -> Result<usize> {
    let d = match q_w.0 {
        [d] if *d > 0 => *d,
        s => return Err(Error::shape(op, "q_weight", "(head_dim,)", shape_str(s))),
    };
    for (arg, (s, t)) in [("q_weight", q_w), ("k_weight", k_w)] {
        if t != dtype {
            return Err(Error::dtype(op, arg, dtype, t));
        }
        if s != [d] {
            return Err(Error::shape(op, arg, format!("({d},)"), shape_str(s)));
        }
    }
    if d > max_head(dtype) {
        return Err(Error::shape(
            op,
            "q_weight",
            format!("(D,) with D <= {} for {dtype}", max_head(dtype)),
            shape_str(q_w.0),
        ));
    }
    Ok(d)
}

/// DV, the value heads' size, of a q|k|v projection row `width` wide (`lead` names the
/// leading axes in the message): hq query and hk key heads of d, then hk value heads.
pub(super) fn value_width(
    op: &'static str,
    (shape, lead): (&[usize], &str),
    width: usize,
    (hq, hk, d): (usize, usize, usize),
) -> Result<usize> {
    let qk = (hq + hk) * d;
    if width <= qk || (width - qk) % hk != 0 {
        return Err(Error::shape(
            op,
            "qkv",
            format!(
                "({lead}, {qk} + {hk} * DV): {hq} query and {hk} key heads of {d}, then values"
            ),
            shape_str(shape),
        ));
    }
    Ok((width - qk) / hk)
}

pub(super) fn check_eps(op: &'static str, eps: (f64, f64)) -> Result<()> {
    for e in [eps.0, eps.1] {
        if !(e.is_finite() && e >= 0.0) {
            return Err(Error::value(op, "eps", "a finite number >= 0", e));
        }
    }
    Ok(())
}

/// Grid and block of a launch of one warp per head, `warps` in all over `rows` rows of qkv:
/// blocks of the most warps (up to 4) that divide them exactly.
pub(super) fn warp_per_head_grid(
    op: &'static str,
    shape: &[usize],
    rows: usize,
    warps: usize,
) -> Result<([u32; 3], [u32; 3])> {
    if rows == 0 || warps * 32 > u32::MAX as usize || numel(shape) > i32::MAX as usize {
        return Err(Error::shape(
            op,
            "qkv",
            "between 1 row and 2**31 values",
            shape_str(shape),
        ));
    }
    let per_block = [4, 2, 1].into_iter().find(|w| warps % w == 0).unwrap_or(1);
    Ok(([(warps * 32) as u32, 1, 1], [(per_block * 32) as u32, 1, 1]))
}

/// qkv (..., (n_heads + n_kv_heads) * D + n_kv_heads * DV), q_w and k_w (D,), all of one
/// float dtype → q (..., n_heads, D), k (..., n_kv_heads, D), v (..., n_kv_heads, DV).
pub fn plan(
    qkv: (&[usize], DType),
    q_w: (&[usize], DType),
    k_w: (&[usize], DType),
    eps: (f64, f64),
    n_heads: i64,
    n_kv_heads: i64,
) -> Result<Launch> {
    let (shape, dtype) = qkv;
    require_float(OP, "qkv", dtype)?;
    let (hq, hk) = head_counts(OP, n_heads, n_kv_heads)?;
    let d = head_weights(OP, q_w, k_w, dtype)?;
    let Some((&width, lead)) = shape.split_last() else {
        return Err(Error::shape(OP, "qkv", "an array (..., width)", "()"));
    };
    let dv = value_width(OP, (shape, "..."), width, (hq, hk, d))?;
    check_eps(OP, eps)?;
    let rows = numel(lead);
    let (grid, threadgroup) = warp_per_head_grid(OP, shape, rows, rows * (hq + hk))?;
    let with = |h: usize, n: usize| {
        let mut s = lead.to_vec();
        s.extend([h, n]);
        s
    };
    Ok(Launch {
        kernel: &QK_RMS_NORM,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("HQ", TemplateArg::Int(hq as i32)),
            ("HK", TemplateArg::Int(hk as i32)),
            ("D", TemplateArg::Int(d as i32)),
            ("DV", TemplateArg::Int(dv as i32)),
            ("VEC", TemplateArg::Int(vector_width(dtype) as i32)),
            (
                "EPS_Q_BITS",
                TemplateArg::Int((eps.0 as f32).to_bits() as i32),
            ),
            (
                "EPS_K_BITS",
                TemplateArg::Int((eps.1 as f32).to_bits() as i32),
            ),
        ],
        grid,
        threadgroup,
        output_shapes: vec![with(hq, d), with(hk, d), with(hk, dv)],
        output_dtypes: vec![dtype; 3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warp_per_head_and_the_heads_shapes() {
        let w = [128usize];
        let l = plan(
            (&[1, 1, (32 + 4) * 128 + 4 * 128], DType::BF16),
            (&w, DType::BF16),
            (&w, DType::BF16),
            (1e-6, 1e-6),
            32,
            4,
        )
        .unwrap();
        assert_eq!(l.grid, [36 * 32, 1, 1]);
        assert_eq!(l.threadgroup, [128, 1, 1]);
        assert_eq!(
            l.output_shapes,
            vec![vec![1, 1, 32, 128], vec![1, 1, 4, 128], vec![1, 1, 4, 128]]
        );
        // 3 rows of 3 + 2 heads: 15 warps, one per block.
        let l = plan(
            (&[3, 5 * 64 + 2 * 32], DType::F32),
            (&[64], DType::F32),
            (&[64], DType::F32),
            (1e-5, 1e-6),
            3,
            2,
        )
        .unwrap();
        assert_eq!((l.grid[0], l.threadgroup[0]), (15 * 32, 32));
        assert_eq!(l.output_shapes[2], vec![3, 2, 32]);
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let f = DType::F32;
        let err = |r: Result<Launch>| r.unwrap_err().to_string();
        let ok_w = [64usize];
        let qkv = [1usize, 5 * 64 + 2 * 64];
        let call = |qkv: &[usize], q: &[usize], k: &[usize], kt: DType, hq: i64| {
            plan((qkv, f), (q, f), (k, kt), (1e-6, 1e-6), hq, 2)
        };
        assert!(err(call(&qkv, &ok_w, &[32], f, 3)).contains("'k_weight'"));
        assert!(err(call(&qkv, &ok_w, &ok_w, DType::F16, 3)).contains("'k_weight'"));
        assert!(err(call(&qkv, &ok_w, &ok_w, f, 0)).contains("'n_heads'"));
        assert!(err(call(&[1, 5 * 64 + 3], &ok_w, &ok_w, f, 3)).contains("'qkv'"));
        assert!(err(call(&qkv, &[256], &[256], f, 3)).contains("128"));
        let nan = plan((&qkv, f), (&ok_w, f), (&ok_w, f), (f64::NAN, 1e-6), 3, 2);
        assert!(err(nan).contains("'eps'"));
    }
}
