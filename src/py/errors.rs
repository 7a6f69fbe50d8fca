use crate::error::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::create_exception!(
    zmlx_rs,
    ZmlxError,
    PyValueError,
    "Base class of every zmlx_rs error."
);
pyo3::create_exception!(
    zmlx_rs,
    ShapeError,
    ZmlxError,
    "An array argument has the wrong rank or shape."
);
pyo3::create_exception!(
    zmlx_rs,
    DTypeError,
    ZmlxError,
    "An array argument has a dtype the operation does not take."
);
pyo3::create_exception!(
    zmlx_rs,
    BackendError,
    ZmlxError,
    "The backend cannot run what was asked."
);

pyo3::create_exception!(
    zmlx_rs,
    CheckpointError,
    ZmlxError,
    "A checkpoint file is missing, unreadable or malformed."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Shape { .. } => ShapeError::new_err(msg),
            Error::DType { .. } => DTypeError::new_err(msg),
            Error::Value { .. } => ZmlxError::new_err(msg),
            Error::Backend(_) => BackendError::new_err(msg),
            Error::Checkpoint { .. } => CheckpointError::new_err(msg),
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ZmlxError", py.get_type::<ZmlxError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("DTypeError", py.get_type::<DTypeError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    Ok(())
}
