//! qwen3 attention's front at one decode token: the per-head q/k RMSNorms of `qk_rms_norm`
//! and the RoPE of `qkv_rope` in one node, straight from the fused q|k|v projection (mlx-lm:
//! split, three reshapes, two RMSNorms after copies, three transposes, two rope nodes).

use super::qk_rms_norm::{check_eps, head_counts, head_weights, value_width, warp_per_head_grid};
use super::qkv_rope::{decode_heads, decode_rows, offset_per_row, rope_template, Heads, Rope};
use super::{require_float, vector_width, DType, KernelSource, Launch, TemplateArg, RMS, WARP};
use crate::error::{shape_str, Error, Result};

pub static QK_NORM_ROPE: KernelSource = KernelSource {
    name: "zmlx_qk_norm_rope",
    inputs: &["qkv", "q_w", "k_w", "offset"],
    outputs: &["q_out", "k_out", "v_out"],
    helpers: &[WARP, RMS],
    body: include_str!("cuda/qk_norm_rope.cu"),
    launch_bounds: false,
};

const OP: &str = "qk_norm_rope";

/// qkv (B, 1, (n_heads + n_kv_heads) * D + n_kv_heads * DV), q_w and k_w (D,), all of one
/// float dtype, offset int32 () or (B,) → q (B, n_heads, 1, D), k (B, n_kv_heads, 1, D),
/// v (B, n_kv_heads, 1, DV). `heads.head_dim` must be q_w's length.
pub fn plan(
    qkv: (&[usize], DType),
    q_w: (&[usize], DType),
    k_w: (&[usize], DType),
    offset: (&[usize], DType),
    eps: (f64, f64),
    heads: Heads,
    rope: Rope,
) -> Result<Launch> {
    let (shape, dtype) = qkv;
    require_float(OP, "qkv", dtype)?;
    let (hq, hk) = head_counts(OP, heads.n_heads, heads.n_kv_heads)?;
    let d = head_weights(OP, q_w, k_w, dtype)?;
    // Whole vectors per half head: a value's partner is a whole number of lanes away.
    let vec = vector_width(dtype);
    if d % (2 * vec) != 0 {
        return Err(Error::shape(
            OP,
            "q_weight",
            format!("(D,) with D a multiple of {} for {dtype}", 2 * vec),
            shape_str(q_w.0),
        ));
    }
    if heads.head_dim != d as i64 {
        return Err(Error::value(
            OP,
            "head_dim",
            format!("q_weight's length {d}"),
            heads.head_dim,
        ));
    }
    let (b, width) = decode_rows(OP, shape)?;
    let dv = value_width(OP, (shape, "B, 1"), width, (hq, hk, d))?;
    check_eps(OP, eps)?;
    // One warp per query and key head (a key head's warp copies its values).
    let (grid, threadgroup) = warp_per_head_grid(OP, shape, b, b * (hq + hk))?;
    let per_row = offset_per_row(OP, offset, b)?;
    let rope_args = rope_template(OP, rope)?;
    Ok(Launch {
        kernel: &QK_NORM_ROPE,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("HQ", TemplateArg::Int(hq as i32)),
            ("HK", TemplateArg::Int(hk as i32)),
            ("D", TemplateArg::Int(d as i32)),
            ("DV", TemplateArg::Int(dv as i32)),
            ("VEC", TemplateArg::Int(vec as i32)),
            (
                "EPS_Q_BITS",
                TemplateArg::Int((eps.0 as f32).to_bits() as i32),
            ),
            (
                "EPS_K_BITS",
                TemplateArg::Int((eps.1 as f32).to_bits() as i32),
            ),
            ("PER_ROW", TemplateArg::Bool(per_row)),
        ]
        .into_iter()
        .chain(rope_args)
        .collect(),
        grid,
        threadgroup,
        output_shapes: decode_heads(b, (hq, hk, d), dv),
        output_dtypes: vec![dtype; 3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qkv_rope::tests::{heads, ROPE};

    #[test]
    fn qwen3_30b_a3b_decode() {
        let w = [128usize];
        let l = plan(
            (&[1, 1, (32 + 4) * 128 + 4 * 128], DType::BF16),
            (&w, DType::BF16),
            (&w, DType::BF16),
            (&[], DType::I32),
            (1e-6, 1e-6),
            heads(32, 4, 128),
            ROPE,
        )
        .unwrap();
        assert_eq!(l.grid, [36 * 32, 1, 1]);
        assert_eq!(
            l.output_shapes,
            vec![vec![1, 32, 1, 128], vec![1, 4, 1, 128], vec![1, 4, 1, 128]]
        );
        assert!(l.template.contains(&("VEC", TemplateArg::Int(8))));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let f = DType::F32;
        let err = |r: Result<Launch>| r.unwrap_err().to_string();
        let w = [64usize];
        let qkv = [2usize, 1, 5 * 64 + 2 * 64];
        let call = |qkv: &[usize], q: &[usize], o: &[usize], h: Heads| {
            plan(
                (qkv, f),
                (q, f),
                (q, f),
                (o, DType::I32),
                (1e-6, 1e-6),
                h,
                ROPE,
            )
        };
        assert!(err(call(&qkv, &w, &[], heads(3, 2, 32))).contains("'head_dim'"));
        assert!(err(call(&qkv, &[36], &[], heads(3, 2, 36))).contains("'q_weight'"));
        assert!(err(call(&[2, 3, 448], &w, &[], heads(3, 2, 64))).contains("'qkv'"));
        assert!(err(call(&qkv, &w, &[5], heads(3, 2, 64))).contains("'offset'"));
        assert!(err(call(&qkv, &w, &[], heads(3, 0, 64))).contains("'n_kv_heads'"));
        let nan = plan(
            (&qkv, f),
            (&w, f),
            (&w, f),
            (&[], DType::I32),
            (f64::NAN, 1e-6),
            heads(3, 2, 64),
            ROPE,
        );
        assert!(err(nan).contains("'eps'"));
    }
}
