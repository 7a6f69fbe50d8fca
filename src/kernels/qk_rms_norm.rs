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
};

const OP: &str = "qk_rms_norm";

/// The widest head the kernel takes: MLX's RMSNorm then sums it in its first warp alone.
pub fn max_head(dtype: DType) -> usize {
    32 * vector_width(dtype)
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
    if n_heads < 1 {
        return Err(Error::value(OP, "n_heads", ">= 1", n_heads));
    }
    if n_kv_heads < 1 {
        return Err(Error::value(OP, "n_kv_heads", ">= 1", n_kv_heads));
    }
    let (hq, hk) = (n_heads as usize, n_kv_heads as usize);
    let q_shape = q_w.0;
    let d = match q_shape {
        [d] if *d > 0 => *d,
        _ => {
            return Err(Error::shape(
                OP,
                "q_weight",
                "(head_dim,)",
                shape_str(q_shape),
            ))
        }
    };
    for (arg, (s, t)) in [("q_weight", q_w), ("k_weight", k_w)] {
        if t != dtype {
            return Err(Error::dtype(OP, arg, dtype, t));
        }
        if s != [d] {
            return Err(Error::shape(OP, arg, format!("({d},)"), shape_str(s)));
        }
    }
    if d > max_head(dtype) {
        return Err(Error::shape(
            OP,
            "q_weight",
            format!("(D,) with D <= {} for {dtype}", max_head(dtype)),
            shape_str(q_shape),
        ));
    }
    let Some((&width, lead)) = shape.split_last() else {
        return Err(Error::shape(OP, "qkv", "an array (..., width)", "()"));
    };
    let qk = (hq + hk) * d;
    if width <= qk || (width - qk) % hk != 0 {
        return Err(Error::shape(
            OP,
            "qkv",
            format!("(..., {qk} + {hk} * DV): {hq} query and {hk} key heads of {d}, then values"),
            shape_str(shape),
        ));
    }
    let dv = (width - qk) / hk;
    for (arg, e) in [("eps", eps.0), ("eps", eps.1)] {
        if !(e.is_finite() && e >= 0.0) {
            return Err(Error::value(OP, arg, "a finite number >= 0", e));
        }
    }
    let rows = numel(lead);
    let warps = rows * (hq + hk);
    if rows == 0 || warps * 32 > u32::MAX as usize || numel(shape) > i32::MAX as usize {
        return Err(Error::shape(
            OP,
            "qkv",
            "between 1 row and 2**31 values",
            shape_str(shape),
        ));
    }
    // Warps per block: the most (up to 4) that divide the launch's warps exactly.
    let per_block = [4, 2, 1].into_iter().find(|w| warps % w == 0).unwrap_or(1);
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
        grid: [(warps * 32) as u32, 1, 1],
        threadgroup: [(per_block * 32) as u32, 1, 1],
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
