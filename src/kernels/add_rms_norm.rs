//! A residual add and the RMSNorm that reads it, `h = x + r; out = rms_norm(h, w, eps)`, in
//! one kernel with two outputs: a transformer block's `h = x + r` followed by its
//! `post_attention_layernorm(h)` are two graph nodes in mlx-lm, and on MLX-CUDA decode every
//! node costs CPU time. The arithmetic is MLX-CUDA's own for both ops (see the kernel), so
//! the results are MLX's bit for bit where MLX runs its one-block-per-row `rms_norm_small`:
//! rows of up to 8 vectors of 16 bytes per thread of 128.

use super::{
    numel, require_float, vector_width, DType, KernelSource, Launch, TemplateArg, RMS, WARP,
};
use crate::error::{shape_str, Error, Result};

pub static ADD_RMS_NORM: KernelSource = KernelSource {
    name: "zmlx_add_rms_norm",
    inputs: &["x", "r", "w"],
    outputs: &["h", "out"],
    helpers: &[WARP, RMS],
    body: include_str!("cuda/add_rms_norm.cu"),
    launch_bounds: false,
};

const OP: &str = "add_rms_norm";

/// The longest row MLX's `rms_norm_small` takes (and so this kernel).
pub fn max_row(dtype: DType) -> usize {
    vector_width(dtype) * 128 * 8
}

/// (threads per block, vectors per thread) as MLX-CUDA's rms_norm dispatch picks them.
fn mlx_geometry(d: usize, vec: usize) -> (usize, usize) {
    let nvec = d.div_ceil(vec);
    if d <= vec * 64 {
        (64, 1)
    } else if nvec % 128 == 0 && nvec / 128 <= 8 {
        (128, nvec / 128)
    } else if nvec % 64 == 0 && nvec / 64 <= 8 {
        (64, nvec / 64)
    } else {
        (128, nvec.div_ceil(128))
    }
}

/// x and r (..., D) of one float dtype, w (D,) of the same dtype, eps >= 0 → h and out, both
/// shaped and typed as x.
pub fn plan(
    x: (&[usize], DType),
    r: (&[usize], DType),
    w: (&[usize], DType),
    eps: f64,
) -> Result<Launch> {
    let (shape, dtype) = x;
    require_float(OP, "x", dtype)?;
    let Some(&d) = shape.last() else {
        return Err(Error::shape(OP, "x", "an array (..., D)", "()"));
    };
    if d == 0 || d > max_row(dtype) {
        return Err(Error::shape(
            OP,
            "x",
            format!("(..., D) with 1 <= D <= {} for {dtype}", max_row(dtype)),
            shape_str(shape),
        ));
    }
    if r.1 != dtype {
        return Err(Error::dtype(OP, "r", dtype, r.1));
    }
    if r.0 != shape {
        return Err(Error::shape(
            OP,
            "r",
            format!("{} (the shape of 'x')", shape_str(shape)),
            shape_str(r.0),
        ));
    }
    if w.1 != dtype {
        return Err(Error::dtype(OP, "weight", dtype, w.1));
    }
    if w.0 != [d] {
        return Err(Error::shape(
            OP,
            "weight",
            format!("({d},) (x's last axis)"),
            shape_str(w.0),
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::value(OP, "eps", "a finite number >= 0", eps));
    }
    let rows = numel(shape) / d;
    let (block, chunks) = mlx_geometry(d, vector_width(dtype));
    if rows == 0 || rows * block > u32::MAX as usize || numel(shape) > i32::MAX as usize {
        return Err(Error::shape(
            OP,
            "x",
            "between 1 row and 2**31 values",
            shape_str(shape),
        ));
    }
    Ok(Launch {
        kernel: &ADD_RMS_NORM,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("D", TemplateArg::Int(d as i32)),
            ("BLOCK", TemplateArg::Int(block as i32)),
            ("CHUNKS", TemplateArg::Int(chunks as i32)),
            ("VEC", TemplateArg::Int(vector_width(dtype) as i32)),
            // MLX passes eps as an fp32 argument: its bits, exactly.
            ("EPS_BITS", TemplateArg::Int((eps as f32).to_bits() as i32)),
        ],
        grid: [(rows * block) as u32, 1, 1],
        threadgroup: [block as u32, 1, 1],
        output_shapes: vec![shape.to_vec(), shape.to_vec()],
        output_dtypes: vec![dtype, dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_mlx_rms_norm_dispatch() {
        // bf16 (8 values per vector): 4096 -> 128 x 4, 2048 -> 128 x 2, 5120 -> 128 x 5,
        // 7168 -> 128 x 7, 512 -> 64 x 1, 1000 -> 128 x 1 (125 vectors), 1536 -> 64 x 3,
        // 3000 -> 128 x 3.
        for (d, want) in [
            (4096, (128, 4)),
            (2048, (128, 2)),
            (5120, (128, 5)),
            (7168, (128, 7)),
            (512, (64, 1)),
            (1000, (128, 1)),
            (1536, (64, 3)),
            (3000, (128, 3)),
        ] {
            assert_eq!(mlx_geometry(d, 8), want, "D = {d}");
        }
        let l = plan(
            (&[2, 3, 4096], DType::BF16),
            (&[2, 3, 4096], DType::BF16),
            (&[4096], DType::BF16),
            1e-5,
        )
        .unwrap();
        assert_eq!(l.grid, [6 * 128, 1, 1]);
        assert_eq!(l.output_shapes, vec![vec![2, 3, 4096]; 2]);
        assert!(l
            .template
            .contains(&("EPS_BITS", TemplateArg::Int(1e-5f32.to_bits() as i32))));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let x = [1usize, 64];
        let err = |r: Result<Launch>| r.unwrap_err().to_string();
        let f = DType::F32;
        assert!(err(plan((&x, DType::I32), (&x, f), (&[64], f), 1e-5)).contains("'x'"));
        assert!(err(plan((&x, f), (&[1, 63], f), (&[64], f), 1e-5)).contains("'r'"));
        assert!(err(plan((&x, f), (&x, DType::F16), (&[64], f), 1e-5)).contains("'r'"));
        assert!(err(plan((&x, f), (&x, f), (&[65], f), 1e-5)).contains("'weight'"));
        assert!(err(plan((&x, f), (&x, f), (&[64], DType::BF16), 1e-5)).contains("'weight'"));
        assert!(err(plan((&x, f), (&x, f), (&[64], f), f64::NAN)).contains("'eps'"));
        let long = [1usize, 4097];
        assert!(err(plan((&long, f), (&long, f), (&[4097], f), 1e-5)).contains("4096"));
    }
}
