use crate::detok::{Detokenizer, Kind, Tables};
use crate::error::Error;
use pyo3::prelude::*;
use std::sync::Arc;

/// mlx-lm's streaming detokenizer interface, run in Rust. `kind` names the mlx-lm class it
/// reproduces: "naive", "spm" or "bpe".
#[pyclass(module = "zmlx_rs._native")]
pub struct StreamingDetokenizer {
    inner: Detokenizer,
}

#[pymethods]
impl StreamingDetokenizer {
    #[new]
    #[pyo3(signature = (tokenizer_json, kind, *, trim_space=true, trim_trailing_space=false, clean_up_spaces=false))]
    fn new(
        py: Python<'_>,
        tokenizer_json: &str,
        kind: &str,
        trim_space: bool,
        trim_trailing_space: bool,
        clean_up_spaces: bool,
    ) -> PyResult<Self> {
        let kind = match kind {
            "naive" => Kind::Naive {
                trim_trailing_space,
                clean_up_spaces,
            },
            "spm" => Kind::Spm { trim_space },
            "bpe" => Kind::Bpe,
            other => {
                return Err(Error::value(
                    "StreamingDetokenizer",
                    "kind",
                    "'naive', 'spm' or 'bpe'",
                    format!("{other:?}"),
                )
                .into())
            }
        };
        // Parsing a large vocabulary takes a while; other threads may run meanwhile.
        let tables = py.detach(|| Tables::new(tokenizer_json, kind))?;
        Ok(StreamingDetokenizer {
            inner: Detokenizer::new(Arc::new(tables)),
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        match self.inner.kind() {
            Kind::Naive { .. } => "naive",
            Kind::Spm { .. } => "spm",
            Kind::Bpe => "bpe",
        }
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn add_token(&mut self, token: u32) -> PyResult<()> {
        Ok(self.inner.add_token(token)?)
    }

    fn finalize(&mut self) {
        self.inner.finalize();
    }

    #[getter]
    fn text(&mut self) -> String {
        self.inner.text()
    }

    #[getter]
    fn last_segment(&mut self) -> String {
        self.inner.last_segment()
    }

    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.inner.tokens().to_vec()
    }

    #[getter]
    fn offset(&self) -> usize {
        self.inner.offset()
    }

    #[setter]
    fn set_offset(&mut self, offset: usize) {
        self.inner.set_offset(offset);
    }

    /// mlx-lm's `TokenizerWrapper.detokenizer` hands out `copy.copy` of one detokenizer;
    /// copies share the tables and own their stream.
    fn __copy__(&self) -> Self {
        StreamingDetokenizer {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StreamingDetokenizer>()?;
    Ok(())
}
