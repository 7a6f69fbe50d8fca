//! The `zmlx_rs._native` extension module: thin bindings that convert arguments, call the
//! core, and map [`crate::error::Error`] to Python exceptions in one place.

mod checkpoint;
mod detok;
mod errors;
mod kernels;
mod nvrtc;
mod stats;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    kernels::register(m)?;
    detok::register(m)?;
    checkpoint::register(m)?;
    stats::register(m)?;
    nvrtc::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
