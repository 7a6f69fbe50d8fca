//! Inverted dropout with a counter-based (Philox) mask: deterministic for a key, and the
//! backward pass is the same kernel applied to the cotangent.

use super::{
    exact_grid, flat_width, numel, require_float, require_rank, require_size, DType, KernelSource,
    Launch, TemplateArg, PHILOX,
};
use crate::error::{shape_str, Error, Result};

pub static DROPOUT: KernelSource = KernelSource {
    name: "zmlx_dropout",
    inputs: &["x", "key"],
    outputs: &["out"],
    helpers: &[PHILOX],
    body: include_str!("cuda/dropout.cu"),
    launch_bounds: false,
};

const OP: &str = "dropout";

/// Checks the drop probability; `Ok(true)` when it is 0 and dropout is the identity.
pub fn check_p(p: f64) -> Result<bool> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::value(OP, "p", "a probability in [0, 1)", p));
    }
    Ok(p == 0.0)
}

pub fn plan(x: &[usize], dtype: DType, p: f64, key: &[usize], key_dtype: DType) -> Result<Launch> {
    check_p(p)?;
    require_float(OP, "x", dtype)?;
    require_rank(OP, "x", x, 1, "an array with at least 1 dimension")?;
    require_size(OP, "x", x)?;
    if key_dtype != DType::U32 {
        return Err(Error::dtype(
            OP,
            "key",
            "uint32 (from mx.random.key)",
            key_dtype,
        ));
    }
    if key != [2] {
        return Err(Error::shape(
            OP,
            "key",
            "(2,) (from mx.random.key)",
            shape_str(key),
        ));
    }
    let p_bits = (p as f32).to_bits() as i32;
    // One 16-byte vector per thread (4 or 8 elements: one or two Philox draws).
    let n = numel(x);
    let v = flat_width(n, dtype);
    let (grid, threadgroup) = exact_grid(n / v, 1, 256);
    Ok(Launch {
        kernel: &DROPOUT,
        template: vec![
            ("T", TemplateArg::DType(dtype)),
            ("V", TemplateArg::Int(v as i32)),
            ("P_BITS", TemplateArg::Int(p_bits)),
        ],
        grid,
        threadgroup,
        output_shapes: vec![x.to_vec()],
        output_dtypes: vec![dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_must_be_a_probability() {
        assert!(check_p(0.0).unwrap());
        assert!(!check_p(0.5).unwrap());
        for bad in [-0.1, 1.0, 1.5, f64::NAN] {
            let e = check_p(bad).unwrap_err();
            assert!(matches!(e, Error::Value { arg: "p", .. }), "{bad}");
        }
    }

    #[test]
    fn key_must_be_an_mlx_key() {
        let e = plan(&[4], DType::F32, 0.5, &[2], DType::I32).unwrap_err();
        assert!(matches!(e, Error::DType { arg: "key", .. }));
        let e = plan(&[4], DType::F32, 0.5, &[3], DType::U32).unwrap_err();
        assert!(matches!(e, Error::Shape { arg: "key", .. }));
        let l = plan(&[4, 9], DType::BF16, 0.25, &[2], DType::U32).unwrap();
        assert_eq!(l.grid[0], 36); // 36 is no multiple of 8: one element per thread
        assert!(l
            .template
            .contains(&("P_BITS", TemplateArg::Int(0.25f32.to_bits() as i32))));
    }
}
