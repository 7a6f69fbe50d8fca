//! qwen3 attention's front at one decode token: the per-head q/k RMSNorms of `qk_rms_norm`
//! and the RoPE of `qkv_rope` in one node, straight from the fused q|k|v projection (mlx-lm:
//! split, three reshapes, two RMSNorms after copies, three transposes, two rope nodes).

use super::qk_rms_norm::max_head;
use super::qkv_rope::{offset_per_row, rope_template, Heads, Rope};
use super::{
    numel, require_float, vector_width, DType, KernelSource, Launch, TemplateArg, RMS, WARP,
};
use crate::error::{shape_str, Error, Result};

pub static QK_NORM_ROPE: KernelSource = KernelSource {
    name: "zmlx_qk_norm_rope",
    inputs: &["qkv", "q_w", "k_w", "offset"],
    outputs: &["q_out", "k_out", "v_out"],
    helpers: &[WARP, RMS],
    body: include_str!("cuda/qk_norm_rope.cu"),
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
    for (arg, n) in [("n_heads", heads.n_heads), ("n_kv_heads", heads.n_kv_heads)] {
        if n < 1 {
            return Err(Error::value(OP, arg, ">= 1", n));
        }
    }
    let (hq, hk) = (heads.n_heads as usize, heads.n_kv_heads as usize);
    let vec = vector_width(dtype);
    let d = match q_w.0 {
        [d] if *d > 0 => *d,
        s => return Err(Error::shape(OP, "q_weight", "(head_dim,)", shape_str(s))),
    };
    for (arg, (s, t)) in [("q_weight", q_w), ("k_weight", k_w)] {
        if t != dtype {
            return Err(Error::dtype(OP, arg, dtype, t));
        }
        if s != [d] {
            return Err(Error::shape(OP, arg, format!("({d},)"), shape_str(s)));
        }
    }
    // Whole vectors per half head: a value's partner is a whole number of lanes away.
    if d > max_head(dtype) || d % (2 * vec) != 0 {
        return Err(Error::shape(
            OP,
            "q_weight",
            format!(
                "(D,) with D <= {} a multiple of {} for {dtype}",
                max_head(dtype),
                2 * vec
            ),
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
    let [b, 1, width] = *shape else {
        return Err(Error::shape(
            OP,
            "qkv",
            "(B, 1, width): one decode token per row",
            shape_str(shape),
        ));
    };
    let qk = (hq + hk) * d;
    if width <= qk || (width - qk) % hk != 0 {
        return Err(Error::shape(
            OP,
            "qkv",
            format!("(B, 1, {qk} + {hk} * DV): {hq} query and {hk} key heads of {d}, then values"),
            shape_str(shape),
        ));
    }
    let dv = (width - qk) / hk;
    for e in [eps.0, eps.1] {
        if !(e.is_finite() && e >= 0.0) {
            return Err(Error::value(OP, "eps", "a finite number >= 0", e));
        }
    }
    let warps = b * (hq + hk);
    if b == 0 || warps * 32 > u32::MAX as usize || numel(shape) > i32::MAX as usize {
        return Err(Error::shape(
            OP,
            "qkv",
            "between 1 row and 2**31 values",
            shape_str(shape),
        ));
    }
    let per_row = offset_per_row(OP, offset, b)?;
    let rope_args = rope_template(OP, rope)?;
    let per_block = [4, 2, 1].into_iter().find(|w| warps % w == 0).unwrap_or(1);
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
        grid: [(warps * 32) as u32, 1, 1],
        threadgroup: [(per_block * 32) as u32, 1, 1],
        output_shapes: vec![vec![b, hq, 1, d], vec![b, hk, 1, d], vec![b, hk, 1, dv]],
        output_dtypes: vec![dtype; 3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROPE: Rope = Rope {
        base: 1e6,
        scale: 1.0,
        traditional: false,
    };

    fn heads(n_heads: i64, n_kv_heads: i64, head_dim: i64) -> Heads {
        Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        }
    }

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
