//! Gated MLP activations: `act(gate) * up` for SwiGLU (silu) and GeGLU (exact or tanh gelu),
//! on separate gate/up arrays or on one packed `[gate | up]` array, with their gradients.

use super::{
    exact_grid, flat_width, numel, require_float, require_rank, require_size, vector_width, DType,
    KernelSource, Launch, TemplateArg, ACTIVATIONS, MLX_SILU,
};
use crate::error::{shape_str, Error, Result};

pub static GLU: KernelSource = KernelSource {
    name: "zmlx_glu",
    inputs: &["gate", "up"],
    outputs: &["out"],
    helpers: &[MLX_SILU, ACTIVATIONS],
    body: include_str!("cuda/glu.cu"),
    launch_bounds: false,
};

pub static GLU_PACKED: KernelSource = KernelSource {
    name: "zmlx_glu_packed",
    inputs: &["h"],
    outputs: &["out"],
    helpers: &[MLX_SILU, ACTIVATIONS],
    body: include_str!("cuda/glu_packed.cu"),
    launch_bounds: false,
};

pub static GLU_BACKWARD: KernelSource = KernelSource {
    name: "zmlx_glu_backward",
    inputs: &["gate", "up", "cotan"],
    outputs: &["d_gate", "d_up"],
    helpers: &[MLX_SILU, ACTIVATIONS],
    body: include_str!("cuda/glu_backward.cu"),
    launch_bounds: false,
};

pub static GLU_PACKED_BACKWARD: KernelSource = KernelSource {
    name: "zmlx_glu_packed_backward",
    inputs: &["h", "cotan"],
    outputs: &["d_h"],
    helpers: &[MLX_SILU, ACTIVATIONS],
    body: include_str!("cuda/glu_packed_backward.cu"),
    launch_bounds: false,
};

const BLOCK: usize = 256;
/// MLX passes at most this many dimensions to a kernel.
pub(crate) const MAX_NDIM: usize = 10;

/// The gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Silu whose forward product is rounded op by op as MLX evaluates mlx-lm's
    /// `silu(gate) * up` in the inputs' dtype (bit-identical to it); gradient as [`Self::Silu`].
    SiluMlx,
    Gelu,
    GeluApprox,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "silu" => Ok(Activation::Silu),
            "silu_mlx" => Ok(Activation::SiluMlx),
            "gelu" => Ok(Activation::Gelu),
            "gelu_approx" => Ok(Activation::GeluApprox),
            other => Err(Error::value(
                "glu",
                "activation",
                "one of 'silu', 'silu_mlx', 'gelu', 'gelu_approx'",
                format!("'{other}'"),
            )),
        }
    }

    fn code(self) -> i32 {
        match self {
            Activation::Silu => 0,
            Activation::Gelu => 1,
            Activation::GeluApprox => 2,
            Activation::SiluMlx => 3,
        }
    }

    fn op(self, packed: bool) -> &'static str {
        match (self, packed) {
            (Activation::Silu | Activation::SiluMlx, false) => "swiglu",
            (Activation::Silu | Activation::SiluMlx, true) => "swiglu_packed",
            (_, false) => "geglu",
            (_, true) => "geglu_packed",
        }
    }
}

fn check_array(op: &'static str, arg: &'static str, shape: &[usize], dtype: DType) -> Result<()> {
    require_float(op, arg, dtype)?;
    require_rank(op, arg, shape, 1, "an array with at least 1 dimension")?;
    if shape.len() > MAX_NDIM {
        return Err(Error::shape(
            op,
            arg,
            format!("at most {MAX_NDIM} dimensions"),
            format!("{} dimensions", shape.len()),
        ));
    }
    require_size(op, arg, shape)
}

fn check_same(
    op: &'static str,
    arg: &'static str,
    other: &'static str,
    shape: &[usize],
    dtype: DType,
    ref_shape: &[usize],
    ref_dtype: DType,
) -> Result<()> {
    if dtype != ref_dtype {
        return Err(Error::dtype(
            op,
            arg,
            format!("{ref_dtype} (the dtype of '{other}')"),
            dtype,
        ));
    }
    if shape != ref_shape {
        return Err(Error::shape(
            op,
            arg,
            format!("{} (the shape of '{other}')", shape_str(ref_shape)),
            shape_str(shape),
        ));
    }
    Ok(())
}

/// Half the last axis of a packed `[gate | up]` array.
fn packed_half(op: &'static str, shape: &[usize]) -> Result<usize> {
    let last = *shape.last().unwrap_or(&0);
    if last == 0 || last % 2 != 0 {
        return Err(Error::shape(
            op,
            "h",
            "an array whose last axis has an even, non-zero size ([gate | up])",
            shape_str(shape),
        ));
    }
    Ok(last / 2)
}

/// Flat kernels take V (elements per thread) as a template argument.
fn elementwise(
    n: usize,
    dtype: DType,
    act: Activation,
) -> (Vec<(&'static str, TemplateArg)>, [u32; 3], [u32; 3]) {
    let v = flat_width(n, dtype);
    let (grid, threadgroup) = exact_grid(n / v, 1, BLOCK);
    let template = vec![
        ("T", TemplateArg::DType(dtype)),
        ("V", TemplateArg::Int(v as i32)),
        ("ACT", TemplateArg::Int(act.code())),
    ];
    (template, grid, threadgroup)
}

/// Packed kernels derive V from H in the body (whole vectors per row half).
fn packed_grid(rows: usize, half: usize, dtype: DType) -> ([u32; 3], [u32; 3]) {
    let v = if half % vector_width(dtype) == 0 {
        vector_width(dtype)
    } else {
        1
    };
    exact_grid(rows * (half / v), 1, BLOCK)
}

fn packed_template(
    dtype: DType,
    half: usize,
    act: Activation,
) -> Result<Vec<(&'static str, TemplateArg)>> {
    let h = i32::try_from(half)
        .map_err(|_| Error::shape(act.op(true), "h", "a last axis below 2^31", half))?;
    Ok(vec![
        ("T", TemplateArg::DType(dtype)),
        ("H", TemplateArg::Int(h)),
        ("ACT", TemplateArg::Int(act.code())),
    ])
}

/// `act(gate) * up` on two arrays of one shape and dtype.
pub fn plan(
    act: Activation,
    gate: &[usize],
    gate_dtype: DType,
    up: &[usize],
    up_dtype: DType,
) -> Result<Launch> {
    let op = act.op(false);
    check_array(op, "gate", gate, gate_dtype)?;
    check_same(op, "up", "gate", up, up_dtype, gate, gate_dtype)?;
    let (template, grid, threadgroup) = elementwise(numel(gate), gate_dtype, act);
    Ok(Launch {
        kernel: &GLU,
        template,
        grid,
        threadgroup,
        output_shapes: vec![gate.to_vec()],
        output_dtypes: vec![gate_dtype],
    })
}

/// `act(h[..., :H]) * h[..., H:]` where the last axis of `h` is `2H`.
pub fn plan_packed(act: Activation, h: &[usize], dtype: DType) -> Result<Launch> {
    let op = act.op(true);
    check_array(op, "h", h, dtype)?;
    let half = packed_half(op, h)?;
    let rows = numel(h) / (2 * half);
    let (grid, threadgroup) = packed_grid(rows, half, dtype);
    let mut out = h.to_vec();
    *out.last_mut().expect("rank checked") = half;
    Ok(Launch {
        kernel: &GLU_PACKED,
        template: packed_template(dtype, half, act)?,
        grid,
        threadgroup,
        output_shapes: vec![out],
        output_dtypes: vec![dtype],
    })
}

/// Gradients of [`plan`]'s op with respect to gate and up.
pub fn plan_backward(
    act: Activation,
    gate: &[usize],
    dtype: DType,
    cotan: &[usize],
    cotan_dtype: DType,
) -> Result<Launch> {
    let op = act.op(false);
    check_array(op, "gate", gate, dtype)?;
    check_same(op, "cotangent", "gate", cotan, cotan_dtype, gate, dtype)?;
    let (template, grid, threadgroup) = elementwise(numel(gate), dtype, act);
    Ok(Launch {
        kernel: &GLU_BACKWARD,
        template,
        grid,
        threadgroup,
        output_shapes: vec![gate.to_vec(), gate.to_vec()],
        output_dtypes: vec![dtype, dtype],
    })
}

/// Gradient of [`plan_packed`]'s op with respect to the packed input.
pub fn plan_packed_backward(
    act: Activation,
    h: &[usize],
    dtype: DType,
    cotan: &[usize],
    cotan_dtype: DType,
) -> Result<Launch> {
    let op = act.op(true);
    check_array(op, "h", h, dtype)?;
    let half = packed_half(op, h)?;
    let mut expected = h.to_vec();
    *expected.last_mut().expect("rank checked") = half;
    check_same(
        op,
        "cotangent",
        "output",
        cotan,
        cotan_dtype,
        &expected,
        dtype,
    )?;
    let rows = numel(h) / (2 * half);
    let (grid, threadgroup) = packed_grid(rows, half, dtype);
    Ok(Launch {
        kernel: &GLU_PACKED_BACKWARD,
        template: packed_template(dtype, half, act)?,
        grid,
        threadgroup,
        output_shapes: vec![h.to_vec()],
        output_dtypes: vec![dtype],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_geometry_covers_every_element() {
        let l = plan(
            Activation::Silu,
            &[3, 1001],
            DType::BF16,
            &[3, 1001],
            DType::BF16,
        )
        .unwrap();
        assert_eq!(l.grid[0], 3003); // not a multiple of 8: one element per thread
        assert!(l.template.contains(&("V", TemplateArg::Int(1))));
        assert_eq!(l.output_shapes, vec![vec![3, 1001]]);
        let l = plan(
            Activation::Silu,
            &[4, 768],
            DType::BF16,
            &[4, 768],
            DType::BF16,
        )
        .unwrap();
        assert_eq!((l.grid[0], l.threadgroup[0]), (384, 192));
        assert!(l.template.contains(&("V", TemplateArg::Int(8))));
    }

    #[test]
    fn packed_halves_the_last_axis() {
        let l = plan_packed(Activation::Silu, &[2, 5, 1536], DType::F16).unwrap();
        assert_eq!(l.output_shapes, vec![vec![2, 5, 768]]);
        assert_eq!(l.grid[0], 10 * 768 / 8);
        assert!(l.template.contains(&("H", TemplateArg::Int(768))));
        // An odd half width falls back to one element per thread.
        let l = plan_packed(Activation::Gelu, &[4, 22], DType::F32).unwrap();
        assert_eq!(l.grid[0], 4 * 11);
    }

    #[test]
    fn mismatches_name_the_argument() {
        let e = plan(Activation::Silu, &[2, 3], DType::F32, &[2, 4], DType::F32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "swiglu(): 'up' must be (2, 3) (the shape of 'gate'), got (2, 4)"
        );
        let e = plan(Activation::Gelu, &[2, 3], DType::F32, &[2, 3], DType::F16).unwrap_err();
        assert!(matches!(e, Error::DType { arg: "up", .. }));
        let e = plan(Activation::Silu, &[2, 3], DType::I32, &[2, 3], DType::I32).unwrap_err();
        assert!(matches!(e, Error::DType { arg: "gate", .. }));
        let e = plan(Activation::Silu, &[], DType::F32, &[], DType::F32).unwrap_err();
        assert!(matches!(e, Error::Shape { arg: "gate", .. }));
        let e = plan_packed(Activation::Silu, &[4, 7], DType::F32).unwrap_err();
        assert!(e.to_string().contains("even"));
        assert!(Activation::parse("relu").is_err());
    }

    #[test]
    fn backward_checks_the_cotangent() {
        let e = plan_packed_backward(Activation::Silu, &[2, 8], DType::F32, &[2, 8], DType::F32)
            .unwrap_err();
        assert!(matches!(
            e,
            Error::Shape {
                arg: "cotangent",
                ..
            }
        ));
        let l = plan_packed_backward(Activation::Silu, &[2, 8], DType::F32, &[2, 4], DType::F32)
            .unwrap();
        assert_eq!(l.output_shapes, vec![vec![2, 8]]);
    }
}
