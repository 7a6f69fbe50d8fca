use crate::stats::{self, Bootstrap};
use pyo3::prelude::*;

/// The summary of paired A/B rounds of one candidate (see `compare_rounds`).
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct Comparison {
    inner: stats::Comparison,
}

#[pymethods]
impl Comparison {
    #[getter]
    fn rounds(&self) -> usize {
        self.inner.rounds
    }
    #[getter]
    fn median_ratio(&self) -> f64 {
        self.inner.median_ratio
    }
    #[getter]
    fn ci_low(&self) -> f64 {
        self.inner.ci_low
    }
    #[getter]
    fn ci_high(&self) -> f64 {
        self.inner.ci_high
    }
    #[getter]
    fn threshold(&self) -> f64 {
        self.inner.threshold
    }
    /// `"gain"`, `"no_gain"`, `"loss"` or `"unsure"`.
    #[getter]
    fn verdict(&self) -> &'static str {
        self.inner.verdict.name()
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "Comparison(rounds={}, median_ratio={:.4}, ci=({:.4}, {:.4}), threshold={:.4}, verdict='{}')",
            c.rounds,
            c.median_ratio,
            c.ci_low,
            c.ci_high,
            c.threshold,
            c.verdict.name()
        )
    }
}

#[pyfunction]
fn median(values: Vec<f64>) -> PyResult<f64> {
    Ok(stats::median(&values)?)
}

#[pyfunction]
#[pyo3(signature = (values, *, confidence = 0.95, resamples = 2000, seed = 0))]
fn bootstrap_median_ci(
    values: Vec<f64>,
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> PyResult<(f64, f64)> {
    let boot = Bootstrap {
        confidence,
        resamples,
        seed,
    };
    Ok(stats::bootstrap_median_ci(&values, boot)?)
}

/// Paired rounds of throughputs (higher is better), candidate vs baseline, judged against
/// `1 + min_gain`.
#[pyfunction]
#[pyo3(signature = (candidate, baseline, *, min_gain, confidence = 0.95, resamples = 2000, seed = 0))]
fn compare_rounds(
    candidate: Vec<f64>,
    baseline: Vec<f64>,
    min_gain: f64,
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> PyResult<Comparison> {
    let boot = Bootstrap {
        confidence,
        resamples,
        seed,
    };
    let inner = stats::compare(&candidate, &baseline, min_gain, boot)?;
    Ok(Comparison { inner })
}

fn inner(comparisons: &[Bound<'_, Comparison>]) -> Vec<stats::Comparison> {
    comparisons.iter().map(|c| c.get().inner.clone()).collect()
}

/// Keep a candidate that gains on at least one workload's comparison and loses on none.
#[pyfunction]
fn keep(comparisons: Vec<Bound<'_, Comparison>>) -> bool {
    stats::keep(&inner(&comparisons))
}

/// True when more rounds cannot change `keep`.
#[pyfunction]
fn settled(comparisons: Vec<Bound<'_, Comparison>>) -> bool {
    stats::settled(&inner(&comparisons))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Comparison>()?;
    m.add_function(wrap_pyfunction!(median, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_median_ci, m)?)?;
    m.add_function(wrap_pyfunction!(compare_rounds, m)?)?;
    m.add_function(wrap_pyfunction!(keep, m)?)?;
    m.add_function(wrap_pyfunction!(settled, m)?)?;
    m.add("MIN_ROUNDS", stats::MIN_ROUNDS)?;
    Ok(())
}
