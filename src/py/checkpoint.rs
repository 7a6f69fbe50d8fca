use crate::checkpoint::{self, CheckpointInfo as CoreInfo};
use pyo3::prelude::*;
use std::path::PathBuf;

/// One tensor of a checkpoint, from its shard's header. `dtype` is the safetensors name.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct TensorInfo {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    dtype: String,
    #[pyo3(get)]
    shape: Vec<usize>,
    #[pyo3(get)]
    nbytes: u64,
    #[pyo3(get)]
    shard: String,
}

#[pymethods]
impl TensorInfo {
    fn __repr__(&self) -> String {
        format!(
            "TensorInfo(name={:?}, dtype={:?}, shape={:?}, nbytes={}, shard={:?})",
            self.name, self.dtype, self.shape, self.nbytes, self.shard
        )
    }
}

/// mlx-lm quantization settings of a checkpoint.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct Quantization {
    #[pyo3(get)]
    bits: u32,
    #[pyo3(get)]
    group_size: u32,
    #[pyo3(get)]
    mode: String,
}

#[pymethods]
impl Quantization {
    fn __repr__(&self) -> String {
        format!(
            "Quantization(bits={}, group_size={}, mode={:?})",
            self.bits, self.group_size, self.mode
        )
    }
}

/// What a checkpoint holds, read from its safetensors headers only.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct CheckpointInfo {
    inner: CoreInfo,
}

#[pymethods]
impl CheckpointInfo {
    /// Sorted by name.
    #[getter]
    fn tensors(&self) -> Vec<TensorInfo> {
        self.inner
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                nbytes: t.nbytes,
                shard: t.shard.clone(),
            })
            .collect()
    }

    #[getter]
    fn n_params(&self) -> u64 {
        self.inner.n_params
    }

    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.tensors.iter().map(|t| t.nbytes).sum()
    }

    #[getter]
    fn quantization(&self) -> Option<Quantization> {
        self.inner.quantization.as_ref().map(|q| Quantization {
            bits: q.bits,
            group_size: q.group_size,
            mode: q.mode.clone(),
        })
    }

    #[getter]
    fn n_experts(&self) -> Option<u64> {
        self.inner.n_experts
    }

    #[getter]
    fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    fn __repr__(&self) -> String {
        format!(
            "CheckpointInfo(tensors={}, n_params={}, quantization={:?}, n_experts={:?}, fingerprint={:?})",
            self.inner.tensors.len(),
            self.inner.n_params,
            self.inner.quantization,
            self.inner.n_experts,
            self.inner.fingerprint
        )
    }
}

/// Describes the checkpoint at `path` from its safetensors headers.
#[pyfunction]
fn inspect_checkpoint(py: Python<'_>, path: PathBuf) -> PyResult<CheckpointInfo> {
    let inner = py.detach(|| checkpoint::inspect(&path))?;
    Ok(CheckpointInfo { inner })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TensorInfo>()?;
    m.add_class::<Quantization>()?;
    m.add_class::<CheckpointInfo>()?;
    m.add_function(wrap_pyfunction!(inspect_checkpoint, m)?)?;
    Ok(())
}
