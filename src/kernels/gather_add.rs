//! The MoE combine: `out[..., h] = sum_k y[..., k, h] * scores[..., k]` in one kernel with
//! fp32 accumulation, instead of a broadcast multiply, a reduction and a cast.

use super::{
    exact_grid, numel, require_float, require_size, vector_width, DType, KernelSource, Launch,
    TemplateArg,
};
use crate::error::{shape_str, Error, Result};

pub static GATHER_ADD: KernelSource = KernelSource {
    name: "zmlx_gather_add",
    inputs: &["y", "scores"],
    outputs: &["out"],
    helpers: &[],
    body: include_str!("cuda/gather_add.cu"),
    launch_bounds: false,
};

const OP: &str = "gather_add";

/// `mlx_rounding`: round as mlx-lm's `(y * scores[..., None]).sum(-2)` on MLX-CUDA: each
/// product `y * score` in the dtype MLX gives it (y's when scores share it, else fp32), and
/// each step of the k-ordered sum in that dtype.
pub fn plan(
    y: &[usize],
    y_dtype: DType,
    scores: &[usize],
    scores_dtype: DType,
    mlx_rounding: bool,
) -> Result<Launch> {
    require_float(OP, "y", y_dtype)?;
    require_float(OP, "scores", scores_dtype)?;
    if y.len() < 2 {
        return Err(Error::shape(
            OP,
            "y",
            "an array (..., k, hidden) with at least 2 dimensions",
            shape_str(y),
        ));
    }
    if y.len() > super::glu::MAX_NDIM {
        return Err(Error::shape(OP, "y", "at most 10 dimensions", shape_str(y)));
    }
    require_size(OP, "y", y)?;
    let (lead, hidden) = y.split_at(y.len() - 1);
    let hidden = hidden[0];
    let k = lead[lead.len() - 1];
    if scores != lead {
        return Err(Error::shape(
            OP,
            "scores",
            format!("{} (y's shape without its last axis)", shape_str(lead)),
            shape_str(scores),
        ));
    }
    if k == 0 || hidden == 0 {
        return Err(Error::shape(
            OP,
            "y",
            "an array with non-empty k and hidden axes",
            shape_str(y),
        ));
    }
    let rows = numel(scores) / k;
    let v = if hidden % vector_width(y_dtype) == 0 {
        vector_width(y_dtype)
    } else {
        1
    };
    let (grid, threadgroup) = exact_grid(rows * (hidden / v), 1, 256);
    let mut out = lead[..lead.len() - 1].to_vec();
    out.push(hidden);
    Ok(Launch {
        kernel: &GATHER_ADD,
        template: vec![
            ("T", TemplateArg::DType(y_dtype)),
            ("S", TemplateArg::DType(scores_dtype)),
            ("K", TemplateArg::Int(k as i32)),
            ("H", TemplateArg::Int(hidden as i32)),
            ("MLXR", TemplateArg::Bool(mlx_rounding)),
        ],
        grid,
        threadgroup,
        output_shapes: vec![out],
        output_dtypes: vec![y_dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_the_k_axis() {
        let l = plan(
            &[1, 1, 8, 2048],
            DType::BF16,
            &[1, 1, 8],
            DType::BF16,
            false,
        )
        .unwrap();
        assert_eq!(l.output_shapes, vec![vec![1, 1, 2048]]);
        assert_eq!(l.grid[0], 2048 / 8);
        let l = plan(&[5, 3, 33], DType::F32, &[5, 3], DType::F32, true).unwrap();
        assert_eq!(l.grid[0], 5 * 33);
    }

    #[test]
    fn scores_must_match_y() {
        let e = plan(&[4, 8, 16], DType::F32, &[4, 7], DType::F32, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gather_add(): 'scores' must be (4, 8) (y's shape without its last axis), got (4, 7)"
        );
        assert!(plan(&[16], DType::F32, &[], DType::F32, false).is_err());
        assert!(plan(&[4, 8, 16], DType::U32, &[4, 8], DType::F32, false).is_err());
    }
}
