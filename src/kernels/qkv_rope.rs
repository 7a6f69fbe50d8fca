//! RoPE of q and k straight from a fused q|k|v projection at one decode token (llama, mistral
//! and qwen2 attention): mlx-lm splits the projection, reshapes q, k and v into heads,
//! transposes them and runs two `mx.fast.rope` nodes (two kernel nodes and nine views); this
//! is one node with three outputs and MLX-CUDA's rope arithmetic (see the kernel).

use super::qk_rms_norm::{head_counts, value_width, warp_per_head_grid};
use super::{require_float, DType, KernelSource, Launch, TemplateArg};
use crate::error::{shape_str, Error, Result};

pub static QKV_ROPE: KernelSource = KernelSource {
    name: "zmlx_qkv_rope",
    inputs: &["qkv", "offset"],
    outputs: &["q_out", "k_out", "v_out"],
    helpers: &[],
    body: include_str!("cuda/qkv_rope.cu"),
    launch_bounds: false,
};

const OP: &str = "qkv_rope";

/// Head counts and sizes of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub head_dim: i64,
}

/// How nn.RoPE rotates: `mx.fast.rope(x, head_dim, traditional, base, scale, offset)`.
#[derive(Debug, Clone, Copy)]
pub struct Rope {
    pub base: f64,
    pub scale: f64,
    pub traditional: bool,
}

/// Whether `offset` (int32, () or (B,)) gives one position per row of `b`.
pub(super) fn offset_per_row(
    op: &'static str,
    (shape, dtype): (&[usize], DType),
    b: usize,
) -> Result<bool> {
    if dtype != DType::I32 {
        return Err(Error::dtype(op, "offset", DType::I32, dtype));
    }
    match shape {
        [] | [1] => Ok(false),
        [n] if *n == b => Ok(true),
        _ => Err(Error::shape(
            op,
            "offset",
            format!("() or ({b},): one position, or one per row"),
            shape_str(shape),
        )),
    }
}

/// The rope kernels' TRAD, BASE_BITS (log2(base) in float, as MLX computes it from its float
/// base) and SCALE_BITS template arguments.
pub(super) fn rope_template(
    op: &'static str,
    rope: Rope,
) -> Result<[(&'static str, TemplateArg); 3]> {
    if !(rope.base.is_finite() && rope.base > 0.0) {
        return Err(Error::value(op, "base", "a finite number > 0", rope.base));
    }
    if !rope.scale.is_finite() {
        return Err(Error::value(op, "scale", "a finite number", rope.scale));
    }
    let log2_base = (rope.base as f32).log2();
    Ok([
        ("TRAD", TemplateArg::Bool(rope.traditional)),
        ("BASE_BITS", TemplateArg::Int(log2_base.to_bits() as i32)),
        (
            "SCALE_BITS",
            TemplateArg::Int((rope.scale as f32).to_bits() as i32),
        ),
    ])
}

/// B and the row width of a q|k|v projection at one decode token, (B, 1, width).
pub(super) fn decode_rows(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [b, 1, width] => Ok((b, width)),
        _ => Err(Error::shape(
            op,
            "qkv",
            "(B, 1, width): one decode token per row",
            shape_str(shape),
        )),
    }
}

/// The three outputs of the decode-token kernels: q (B, hq, 1, d), k (B, hk, 1, d),
/// v (B, hk, 1, dv).
pub(super) fn decode_heads(
    b: usize,
    (hq, hk, d): (usize, usize, usize),
    dv: usize,
) -> Vec<Vec<usize>> {
    vec![vec![b, hq, 1, d], vec![b, hk, 1, d], vec![b, hk, 1, dv]]
}

/// qkv (B, 1, (n_heads + n_kv_heads) * D + n_kv_heads * DV) in a float dtype, offset int32 ()
/// or (B,) → q (B, n_heads, 1, D), k (B, n_kv_heads, 1, D), v (B, n_kv_heads, 1, DV).
pub fn plan(
    qkv: (&[usize], DType),
    offset: (&[usize], DType),
    heads: Heads,
    rope: Rope,
) -> Result<Launch> {
    let (shape, dtype) = qkv;
    require_float(OP, "qkv", dtype)?;
    let (hq, hk) = head_counts(OP, heads.n_heads, heads.n_kv_heads)?;
    if heads.head_dim < 2 || heads.head_dim % 2 != 0 {
        return Err(Error::value(
            OP,
            "head_dim",
            "an even number >= 2",
            heads.head_dim,
        ));
    }
    let d = heads.head_dim as usize;
    let (b, width) = decode_rows(OP, shape)?;
    let dv = value_width(OP, (shape, "B, 1"), width, (hq, hk, d))?;
    // One warp per query, key and value head.
    let (grid, threadgroup) = warp_per_head_grid(OP, shape, b, b * (hq + 2 * hk))?;
    let per_row = offset_per_row(OP, offset, b)?;
    let rope_args = rope_template(OP, rope)?;
    Ok(Launch {
        kernel: &QKV_ROPE,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("HQ", TemplateArg::Int(hq as i32)),
            ("HK", TemplateArg::Int(hk as i32)),
            ("D", TemplateArg::Int(d as i32)),
            ("DV", TemplateArg::Int(dv as i32)),
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
pub(crate) mod tests {
    use super::*;

    /// Qwen3 / Mistral RoPE settings, and head counts, for the decode-front planners' tests.
    pub(crate) const ROPE: Rope = Rope {
        base: 1e6,
        scale: 1.0,
        traditional: false,
    };

    pub(crate) fn heads(n_heads: i64, n_kv_heads: i64, head_dim: i64) -> Heads {
        Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        }
    }

    #[test]
    fn one_warp_per_head_and_the_heads_shapes() {
        // Mistral-7B: 32 query heads, 8 key/value heads of 128.
        let qkv = [1usize, 1, 48 * 128];
        let l = plan(
            (&qkv, DType::BF16),
            (&[], DType::I32),
            heads(32, 8, 128),
            ROPE,
        )
        .unwrap();
        assert_eq!(l.grid, [48 * 32, 1, 1]);
        assert_eq!(l.threadgroup, [128, 1, 1]);
        assert_eq!(
            l.output_shapes,
            vec![vec![1, 32, 1, 128], vec![1, 8, 1, 128], vec![1, 8, 1, 128]]
        );
        let t = |name: &str| l.template.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(t("PER_ROW"), TemplateArg::Bool(false));
        assert_eq!(
            t("BASE_BITS"),
            TemplateArg::Int(1e6f32.log2().to_bits() as i32)
        );
        // 3 rows of 3 + 2 * 1 heads, values of 32, one offset per row.
        let l = plan(
            (&[3, 1, 4 * 64 + 32], DType::F32),
            (&[3], DType::I32),
            heads(3, 1, 64),
            ROPE,
        )
        .unwrap();
        assert_eq!((l.grid[0], l.threadgroup[0]), (15 * 32, 32));
        assert_eq!(l.output_shapes[2], vec![3, 1, 1, 32]);
        assert!(l.template.contains(&("PER_ROW", TemplateArg::Bool(true))));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let f = DType::F32;
        let err = |r: Result<Launch>| r.unwrap_err().to_string();
        let qkv = [2usize, 1, 5 * 64 + 2 * 64];
        let call =
            |q: &[usize], o: &[usize], ot: DType, h: Heads, r: Rope| plan((q, f), (o, ot), h, r);
        let h = heads(3, 2, 64);
        assert!(err(call(&[2, 4, 448], &[], DType::I32, h, ROPE)).contains("'qkv'"));
        assert!(err(call(&[2, 1, 449], &[], DType::I32, h, ROPE)).contains("'qkv'"));
        assert!(err(call(&qkv, &[3], DType::I32, h, ROPE)).contains("'offset'"));
        assert!(err(call(&qkv, &[], DType::F32, h, ROPE)).contains("'offset'"));
        assert!(err(call(&qkv, &[], DType::I32, heads(3, 2, 63), ROPE)).contains("'head_dim'"));
        assert!(err(call(&qkv, &[], DType::I32, heads(0, 2, 64), ROPE)).contains("'n_heads'"));
        let bad = Rope { base: 0.0, ..ROPE };
        assert!(err(call(&qkv, &[], DType::I32, h, bad)).contains("'base'"));
        let bad = Rope {
            scale: f64::NAN,
            ..ROPE
        };
        assert!(err(call(&qkv, &[], DType::I32, h, bad)).contains("'scale'"));
        let ints = plan((&qkv, DType::I32), (&[], DType::I32), h, ROPE);
        assert!(err(ints).contains("'qkv'"));
    }
}
