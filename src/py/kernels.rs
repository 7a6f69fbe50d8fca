use crate::error::Error;
use crate::kernels::{
    self, add_rms_norm, dropout, gather_add, glu, moe_gating, moe_qmv, qk_norm_rope, qk_rms_norm,
    qkv_rope, qmv, DType, Launch as CoreLaunch, TemplateArg,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString, PyTuple};

/// One kernel of the catalog, as `mx.fast.cuda_kernel` takes it.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct KernelSpec {
    #[pyo3(get)]
    name: &'static str,
    #[pyo3(get)]
    input_names: Vec<&'static str>,
    #[pyo3(get)]
    output_names: Vec<&'static str>,
    #[pyo3(get)]
    header: String,
    #[pyo3(get)]
    source: String,
}

/// How to call one kernel on arrays of one signature. Dtypes are `mlx.core.Dtype` names.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct Launch {
    pub(crate) inner: CoreLaunch,
}

#[pymethods]
impl Launch {
    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel.name
    }

    /// `(name, value)` pairs; a dtype value is its name as a `str`.
    #[getter]
    fn template<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.inner
            .template
            .iter()
            .map(|(name, arg)| {
                let value = match arg {
                    TemplateArg::Int(i) => PyInt::new(py, *i).into_any(),
                    TemplateArg::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
                    TemplateArg::DType(d) => PyString::new(py, d.name()).into_any(),
                };
                PyTuple::new(py, [PyString::new(py, name).into_any(), value])
            })
            .collect()
    }

    #[getter]
    fn grid(&self) -> (u32, u32, u32) {
        let [x, y, z] = self.inner.grid;
        (x, y, z)
    }

    #[getter]
    fn threadgroup(&self) -> (u32, u32, u32) {
        let [x, y, z] = self.inner.threadgroup;
        (x, y, z)
    }

    #[getter]
    fn output_shapes(&self) -> Vec<Vec<usize>> {
        self.inner.output_shapes.clone()
    }

    #[getter]
    fn output_dtypes(&self) -> Vec<&'static str> {
        self.inner.output_dtypes.iter().map(|d| d.name()).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Launch(kernel='{}', grid={:?}, threadgroup={:?}, outputs={:?})",
            self.inner.kernel.name,
            self.inner.grid,
            self.inner.threadgroup,
            self.inner.output_shapes
        )
    }
}

pub(crate) fn dtype(op: &'static str, arg: &'static str, name: &str) -> Result<DType, Error> {
    DType::parse(name).ok_or_else(|| Error::dtype(op, arg, "an mlx dtype", format!("'{name}'")))
}

fn launch(r: Result<CoreLaunch, Error>) -> PyResult<Launch> {
    Ok(Launch { inner: r? })
}

/// The catalog entry `name` (e.g. `"zmlx_glu"`).
#[pyfunction]
fn kernel_spec(name: &str) -> PyResult<KernelSpec> {
    let k = kernels::find(name)
        .ok_or_else(|| Error::Backend(format!("no kernel named '{name}' in the catalog")))?;
    Ok(KernelSpec {
        name: k.name,
        input_names: k.inputs.to_vec(),
        output_names: k.outputs.to_vec(),
        header: k.header(),
        source: k.cuda_kernel_body(),
    })
}

/// Names of every kernel in the catalog.
#[pyfunction]
fn kernel_names() -> Vec<&'static str> {
    kernels::catalog().iter().map(|k| k.name).collect()
}

#[pyfunction]
fn plan_glu(
    activation: &str,
    gate_shape: Vec<usize>,
    gate_dtype: &str,
    up_shape: Vec<usize>,
    up_dtype: &str,
) -> PyResult<Launch> {
    let act = glu::Activation::parse(activation)?;
    let g = dtype("glu", "gate", gate_dtype)?;
    let u = dtype("glu", "up", up_dtype)?;
    launch(glu::plan(act, &gate_shape, g, &up_shape, u))
}

#[pyfunction]
fn plan_glu_packed(activation: &str, h_shape: Vec<usize>, h_dtype: &str) -> PyResult<Launch> {
    let act = glu::Activation::parse(activation)?;
    launch(glu::plan_packed(act, &h_shape, dtype("glu", "h", h_dtype)?))
}

#[pyfunction]
fn plan_glu_backward(
    activation: &str,
    gate_shape: Vec<usize>,
    gate_dtype: &str,
    cotan_shape: Vec<usize>,
    cotan_dtype: &str,
) -> PyResult<Launch> {
    let act = glu::Activation::parse(activation)?;
    let g = dtype("glu", "gate", gate_dtype)?;
    let c = dtype("glu", "cotangent", cotan_dtype)?;
    launch(glu::plan_backward(act, &gate_shape, g, &cotan_shape, c))
}

#[pyfunction]
fn plan_glu_packed_backward(
    activation: &str,
    h_shape: Vec<usize>,
    h_dtype: &str,
    cotan_shape: Vec<usize>,
    cotan_dtype: &str,
) -> PyResult<Launch> {
    let act = glu::Activation::parse(activation)?;
    let h = dtype("glu", "h", h_dtype)?;
    let c = dtype("glu", "cotangent", cotan_dtype)?;
    launch(glu::plan_packed_backward(act, &h_shape, h, &cotan_shape, c))
}

/// Validates a drop probability; returns True when it is 0 (dropout is the identity).
#[pyfunction]
fn check_dropout_p(p: f64) -> PyResult<bool> {
    Ok(dropout::check_p(p)?)
}

#[pyfunction]
fn plan_dropout(
    x_shape: Vec<usize>,
    x_dtype: &str,
    p: f64,
    key_shape: Vec<usize>,
    key_dtype: &str,
) -> PyResult<Launch> {
    let x = dtype("dropout", "x", x_dtype)?;
    let k = dtype("dropout", "key", key_dtype)?;
    launch(dropout::plan(&x_shape, x, p, &key_shape, k))
}

#[pyfunction]
#[pyo3(signature = (logits_shape, logits_dtype, k, mode, norm_topk, bias_shape, bias_dtype, scale, ties, mlx_rounding=false))]
#[allow(clippy::too_many_arguments)]
fn plan_moe_gating(
    logits_shape: Vec<usize>,
    logits_dtype: &str,
    k: i64,
    mode: &str,
    norm_topk: bool,
    bias_shape: Option<Vec<usize>>,
    bias_dtype: Option<&str>,
    scale: f64,
    ties: &str,
    mlx_rounding: bool,
) -> PyResult<Launch> {
    let mode = moe_gating::Mode::parse(mode)?;
    let ties = moe_gating::Ties::parse(ties)?;
    let logits = dtype("moe_gating", "logits", logits_dtype)?;
    let bias = match (&bias_shape, bias_dtype) {
        (Some(shape), Some(d)) => Some((shape.as_slice(), dtype("moe_gating", "bias", d)?)),
        _ => None,
    };
    launch(moe_gating::plan(
        &logits_shape,
        logits,
        k,
        mode,
        norm_topk,
        bias,
        scale,
        ties,
        mlx_rounding,
    ))
}

#[pyfunction]
#[pyo3(signature = (y_shape, y_dtype, scores_shape, scores_dtype, mlx_rounding = false))]
fn plan_gather_add(
    y_shape: Vec<usize>,
    y_dtype: &str,
    scores_shape: Vec<usize>,
    scores_dtype: &str,
    mlx_rounding: bool,
) -> PyResult<Launch> {
    let y = dtype("gather_add", "y", y_dtype)?;
    let s = dtype("gather_add", "scores", scores_dtype)?;
    launch(gather_add::plan(
        &y_shape,
        y,
        &scores_shape,
        s,
        mlx_rounding,
    ))
}

type ShapeDtype = (Vec<usize>, String);

fn spec<'a>(
    op: &'static str,
    arg: &'static str,
    a: &'a ShapeDtype,
) -> Result<moe_qmv::ArraySpec<'a>, Error> {
    Ok((a.0.as_slice(), dtype(op, arg, &a.1)?))
}

fn experts<'a>(
    op: &'static str,
    w: &'a ShapeDtype,
    scales: &'a ShapeDtype,
    biases: &'a ShapeDtype,
) -> Result<moe_qmv::Experts<'a>, Error> {
    Ok(moe_qmv::Experts {
        w: spec(op, "w", w)?,
        scales: spec(op, "scales", scales)?,
        biases: spec(op, "biases", biases)?,
    })
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
fn plan_gather_qmv_swiglu(
    x: ShapeDtype,
    indices: ShapeDtype,
    w: ShapeDtype,
    scales: ShapeDtype,
    biases: ShapeDtype,
    bits: i64,
    group_size: i64,
) -> PyResult<Launch> {
    const OP: &str = "gather_qmv_swiglu";
    launch(moe_qmv::plan_swiglu(
        spec(OP, "x", &x)?,
        spec(OP, "indices", &indices)?,
        experts(OP, &w, &scales, &biases)?,
        bits,
        group_size,
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn plan_gather_qmv_combine(
    act: ShapeDtype,
    indices: ShapeDtype,
    scores: ShapeDtype,
    w: ShapeDtype,
    scales: ShapeDtype,
    biases: ShapeDtype,
    bits: i64,
    group_size: i64,
) -> PyResult<Launch> {
    const OP: &str = "gather_qmv_combine";
    launch(moe_qmv::plan_combine(
        spec(OP, "act", &act)?,
        spec(OP, "indices", &indices)?,
        spec(OP, "scores", &scores)?,
        experts(OP, &w, &scales, &biases)?,
        bits,
        group_size,
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
fn plan_qmv(
    x: ShapeDtype,
    w: ShapeDtype,
    scales: ShapeDtype,
    biases: ShapeDtype,
    bits: i64,
    group_size: i64,
) -> PyResult<Launch> {
    const OP: &str = "qmv";
    launch(qmv::plan(
        spec(OP, "x", &x)?,
        spec(OP, "w", &w)?,
        spec(OP, "scales", &scales)?,
        spec(OP, "biases", &biases)?,
        bits,
        group_size,
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
fn plan_add_rms_norm(x: ShapeDtype, r: ShapeDtype, w: ShapeDtype, eps: f64) -> PyResult<Launch> {
    const OP: &str = "add_rms_norm";
    launch(add_rms_norm::plan(
        spec(OP, "x", &x)?,
        spec(OP, "r", &r)?,
        spec(OP, "weight", &w)?,
        eps,
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
fn plan_qk_rms_norm(
    qkv: ShapeDtype,
    q_weight: ShapeDtype,
    k_weight: ShapeDtype,
    eps: (f64, f64),
    n_heads: i64,
    n_kv_heads: i64,
) -> PyResult<Launch> {
    const OP: &str = "qk_rms_norm";
    launch(qk_rms_norm::plan(
        spec(OP, "qkv", &qkv)?,
        spec(OP, "q_weight", &q_weight)?,
        spec(OP, "k_weight", &k_weight)?,
        eps,
        n_heads,
        n_kv_heads,
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn plan_qkv_rope(
    qkv: ShapeDtype,
    offset: ShapeDtype,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
    base: f64,
    scale: f64,
    traditional: bool,
) -> PyResult<Launch> {
    const OP: &str = "qkv_rope";
    launch(qkv_rope::plan(
        spec(OP, "qkv", &qkv)?,
        spec(OP, "offset", &offset)?,
        qkv_rope::Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        },
        qkv_rope::Rope {
            base,
            scale,
            traditional,
        },
    ))
}

/// Arrays arrive as `(shape, dtype name)` pairs.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn plan_qk_norm_rope(
    qkv: ShapeDtype,
    q_weight: ShapeDtype,
    k_weight: ShapeDtype,
    offset: ShapeDtype,
    eps: (f64, f64),
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
    base: f64,
    scale: f64,
    traditional: bool,
) -> PyResult<Launch> {
    const OP: &str = "qk_norm_rope";
    launch(qk_norm_rope::plan(
        spec(OP, "qkv", &qkv)?,
        spec(OP, "q_weight", &q_weight)?,
        spec(OP, "k_weight", &k_weight)?,
        spec(OP, "offset", &offset)?,
        eps,
        qkv_rope::Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        },
        qkv_rope::Rope {
            base,
            scale,
            traditional,
        },
    ))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KernelSpec>()?;
    m.add_class::<Launch>()?;
    m.add_function(wrap_pyfunction!(kernel_spec, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_names, m)?)?;
    m.add_function(wrap_pyfunction!(plan_glu, m)?)?;
    m.add_function(wrap_pyfunction!(plan_glu_packed, m)?)?;
    m.add_function(wrap_pyfunction!(plan_glu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(plan_glu_packed_backward, m)?)?;
    m.add_function(wrap_pyfunction!(check_dropout_p, m)?)?;
    m.add_function(wrap_pyfunction!(plan_dropout, m)?)?;
    m.add_function(wrap_pyfunction!(plan_moe_gating, m)?)?;
    m.add_function(wrap_pyfunction!(plan_gather_add, m)?)?;
    m.add_function(wrap_pyfunction!(plan_gather_qmv_swiglu, m)?)?;
    m.add_function(wrap_pyfunction!(plan_gather_qmv_combine, m)?)?;
    m.add_function(wrap_pyfunction!(plan_qmv, m)?)?;
    m.add_function(wrap_pyfunction!(plan_add_rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(plan_qk_rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(plan_qkv_rope, m)?)?;
    m.add_function(wrap_pyfunction!(plan_qk_norm_rope, m)?)?;
    Ok(())
}
