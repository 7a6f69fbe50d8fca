//! MoE router gating in one kernel: the softmax/sigmoid, the top-k selection and the score
//! normalisation that mlx-lm spreads over five to eight graph nodes.

use super::{
    exact_grid, numel, require_float, require_rank, require_size, DType, KernelSource, Launch,
    TemplateArg, WARP,
};
use crate::error::{shape_str, Error, Result};

pub static MOE_GATING: KernelSource = KernelSource {
    name: "zmlx_moe_gating",
    inputs: &["logits"],
    outputs: &["scores", "indices"],
    helpers: &[WARP],
    body: concat!(
        "  auto bias_at = [](int) { return 0.0f; };\n",
        include_str!("cuda/moe_gating.cu")
    ),
    launch_bounds: false,
};

pub static MOE_GATING_BIASED: KernelSource = KernelSource {
    name: "zmlx_moe_gating_biased",
    inputs: &["logits", "bias"],
    outputs: &["scores", "indices"],
    helpers: &[WARP],
    body: concat!(
        "  auto bias_at = [&](int e) { return zm::to_f(bias[e]); };\n",
        include_str!("cuda/moe_gating.cu")
    ),
    launch_bounds: false,
};

const OP: &str = "moe_gating";
/// Each lane of the warp keeps E / 32 logits in registers.
pub const MAX_EXPERTS: usize = 512;
pub const MAX_K: usize = 16;
const ROWS_PER_BLOCK: usize = 4;

/// How router logits become expert scores (see the module docs of each mlx-lm family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// qwen3_moe, qwen2_moe, qwen3_next: softmax over all experts, then top-k.
    Softmax,
    /// mixtral, gpt_oss, granitemoe: top-k logits, then softmax over the k.
    TopkSoftmax,
    /// glm4_moe, deepseek_v3: sigmoid, bias for selection only.
    Sigmoid,
}

impl Mode {
    pub fn parse(name: &str) -> Result<Mode> {
        match name {
            "softmax" => Ok(Mode::Softmax),
            "topk_softmax" => Ok(Mode::TopkSoftmax),
            "sigmoid" => Ok(Mode::Sigmoid),
            other => Err(Error::value(
                OP,
                "mode",
                "one of 'softmax', 'topk_softmax', 'sigmoid'",
                format!("'{other}'"),
            )),
        }
    }

    fn code(self) -> i32 {
        match self {
            Mode::Softmax => 0,
            Mode::TopkSoftmax => 1,
            Mode::Sigmoid => 2,
        }
    }
}

/// Which expert wins when two have the same selection score. mlx-lm picks with
/// `argpartition`, which MLX-CUDA computes as a stable ascending sort: `argpartition(g)[-k:]`
/// (qwen3_moe, qwen3_next, gpt_oss, granitemoe) keeps the higher index of a tie,
/// `argpartition(-g)[:k]` (mixtral, qwen2_moe, glm4_moe, deepseek_v3) the lower. Selection
/// scores tie often in bf16 (128 softmax probabilities near 1/128 share few values), and a
/// different expert is a large change in the block's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    Lower,
    Higher,
}

impl Ties {
    pub fn parse(name: &str) -> Result<Ties> {
        match name {
            "lower" => Ok(Ties::Lower),
            "higher" => Ok(Ties::Higher),
            other => Err(Error::value(
                OP,
                "ties",
                "'lower' or 'higher'",
                format!("'{other}'"),
            )),
        }
    }
}

/// The bias argument's shape and dtype, when one is given.
pub type BiasSpec<'a> = Option<(&'a [usize], DType)>;

#[allow(clippy::too_many_arguments)]
pub fn plan(
    logits: &[usize],
    dtype: DType,
    k: i64,
    mode: Mode,
    norm_topk: bool,
    bias: BiasSpec,
    scale: f64,
    ties: Ties,
    mlx_rounding: bool,
) -> Result<Launch> {
    require_float(OP, "logits", dtype)?;
    require_rank(
        OP,
        "logits",
        logits,
        1,
        "an array (..., n_experts) with at least 1 dimension",
    )?;
    require_size(OP, "logits", logits)?;
    let experts = *logits.last().expect("rank checked");
    if experts == 0 || experts > MAX_EXPERTS {
        return Err(Error::shape(
            OP,
            "logits",
            format!("(..., n_experts) with 1 <= n_experts <= {MAX_EXPERTS}"),
            shape_str(logits),
        ));
    }
    let k_max = MAX_K.min(experts);
    if k < 1 || k as usize > k_max {
        return Err(Error::value(
            OP,
            "k",
            format!("an integer in [1, {k_max}] (at most 16 and at most n_experts)"),
            k,
        ));
    }
    if !scale.is_finite() {
        return Err(Error::value(OP, "scale", "a finite number", scale));
    }
    let kernel = match bias {
        None => &MOE_GATING,
        Some((shape, bias_dtype)) => {
            if mode != Mode::Sigmoid {
                return Err(Error::value(
                    OP,
                    "bias",
                    "None unless mode='sigmoid'",
                    "an array",
                ));
            }
            require_float(OP, "bias", bias_dtype)?;
            if shape != [experts] {
                return Err(Error::shape(
                    OP,
                    "bias",
                    format!("({experts},) (one per expert)"),
                    shape_str(shape),
                ));
            }
            &MOE_GATING_BIASED
        }
    };
    let k = k as usize;
    let rows = numel(logits) / experts;
    let mut out = logits.to_vec();
    *out.last_mut().expect("rank checked") = k;
    let score_dtype = if mode == Mode::Sigmoid {
        DType::F32
    } else {
        dtype
    };
    let (grid, threadgroup) = exact_grid(rows * 32, 32, 32 * ROWS_PER_BLOCK);
    Ok(Launch {
        kernel,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("S", TemplateArg::DType(score_dtype)),
            ("E", TemplateArg::Int(experts as i32)),
            ("K", TemplateArg::Int(k as i32)),
            ("MODE", TemplateArg::Int(mode.code())),
            ("NORM", TemplateArg::Bool(norm_topk)),
            ("TIE_HIGH", TemplateArg::Bool(ties == Ties::Higher)),
            ("MLXR", TemplateArg::Bool(mlx_rounding)),
            (
                "SCALE_BITS",
                TemplateArg::Int((scale as f32).to_bits() as i32),
            ),
        ],
        grid,
        threadgroup,
        output_shapes: vec![out.clone(), out],
        output_dtypes: vec![score_dtype, DType::U32],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax gating, renormalised, ties to the lower index, fp32 rounding.
    fn softmax(shape: &[usize], dtype: DType, k: i64) -> Result<Launch> {
        plan(
            shape,
            dtype,
            k,
            Mode::Softmax,
            true,
            None,
            1.0,
            Ties::Lower,
            false,
        )
    }

    #[test]
    fn one_warp_per_row() {
        let l = softmax(&[1, 128], DType::BF16, 8).unwrap();
        assert_eq!((l.grid, l.threadgroup), ([32, 1, 1], [32, 1, 1]));
        assert_eq!(l.output_shapes, vec![vec![1, 8], vec![1, 8]]);
        assert_eq!(l.output_dtypes, vec![DType::BF16, DType::U32]);
        let l = plan(
            &[3, 7, 60],
            DType::F32,
            4,
            Mode::Sigmoid,
            true,
            Some((&[60], DType::F32)),
            2.5,
            Ties::Lower,
            false,
        )
        .unwrap();
        assert_eq!((l.grid[0], l.threadgroup[0]), (21 * 32, 96));
        assert_eq!(l.output_dtypes[0], DType::F32);
        assert_eq!(l.kernel.name, "zmlx_moe_gating_biased");
        let high = plan(
            &[1, 8],
            DType::F32,
            2,
            Mode::Softmax,
            true,
            None,
            1.0,
            Ties::Higher,
            false,
        );
        assert!(high
            .unwrap()
            .template
            .contains(&("TIE_HIGH", TemplateArg::Bool(true))));
    }

    #[test]
    fn bad_arguments_are_named() {
        let cases: Vec<(Result<Launch>, &str)> = vec![
            (softmax(&[2, 8], DType::F32, 0), "k"),
            (softmax(&[2, 8], DType::F32, 9), "k"),
            (softmax(&[2, 64], DType::F32, 17), "k"),
            (softmax(&[2, 1024], DType::F32, 2), "logits"),
            (softmax(&[2, 8], DType::I32, 2), "logits"),
            (
                plan(
                    &[2, 8],
                    DType::F32,
                    2,
                    Mode::Softmax,
                    true,
                    Some((&[8], DType::F32)),
                    1.0,
                    Ties::Lower,
                    false,
                ),
                "bias",
            ),
            (
                plan(
                    &[2, 8],
                    DType::F32,
                    2,
                    Mode::Sigmoid,
                    true,
                    Some((&[7], DType::F32)),
                    1.0,
                    Ties::Lower,
                    false,
                ),
                "bias",
            ),
            (
                plan(
                    &[2, 8],
                    DType::F32,
                    2,
                    Mode::Sigmoid,
                    true,
                    None,
                    f64::INFINITY,
                    Ties::Lower,
                    false,
                ),
                "scale",
            ),
        ];
        for (r, arg) in cases {
            let e = r.unwrap_err();
            assert!(e.to_string().contains(&format!("'{arg}'")), "{e}");
        }
        assert!(Mode::parse("softmax_topk").is_err());
        let e = Ties::parse("low").unwrap_err().to_string();
        assert!(e.contains("'ties'") && e.contains("'low'"), "{e}");
    }
}
