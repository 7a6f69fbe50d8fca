//! Bindings for the NVRTC kernel compiler and its disk cache.

use super::kernels::{dtype, Launch};
use crate::error::Error;
use crate::kernels::render::{self, Specialisation as CoreSpecialisation};
use crate::nvrtc::{self, Compiler, Toolchain};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;

/// One compiled variant of a catalog kernel: template values and argument dtypes.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct Specialisation {
    inner: CoreSpecialisation,
}

#[pymethods]
impl Specialisation {
    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel.name
    }

    /// The `extern "C"` entry point's name.
    #[getter]
    fn symbol(&self) -> String {
        self.inner.symbol()
    }

    /// The whole translation unit NVRTC compiles.
    #[getter]
    fn source(&self) -> PyResult<String> {
        Ok(self.inner.precompiled_source()?)
    }

    /// The translation unit `mx.fast.cuda_kernel` would build (for compile checks).
    #[getter]
    fn mlx_source(&self) -> PyResult<String> {
        Ok(self.inner.mlx_wrapped_source()?)
    }

    #[getter]
    fn input_dtypes(&self) -> Vec<&'static str> {
        self.inner.input_dtypes.iter().map(|d| d.name()).collect()
    }

    fn __repr__(&self) -> String {
        format!("Specialisation('{}')", self.inner.symbol())
    }
}

/// The specialisation `launch` runs on inputs of these dtypes.
#[pyfunction]
fn specialisation(launch: &Launch, input_dtypes: Vec<String>) -> PyResult<Specialisation> {
    let dtypes = input_dtypes
        .iter()
        .map(|d| dtype("precompiled_kernel", "input_dtypes", d))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Specialisation {
        inner: CoreSpecialisation::of_launch(&launch.inner, dtypes)?,
    })
}

/// Every specialisation the library builds, for compile checks and cache warming.
#[pyfunction]
fn specialisations() -> Vec<Specialisation> {
    render::specialisations()
        .into_iter()
        .map(|inner| Specialisation { inner })
        .collect()
}

/// `(nvrtc_library, include_dirs)` from the `nvidia` pip namespace dirs, then `cuda_home`.
#[pyfunction]
#[pyo3(signature = (nvidia_dirs, cuda_home, extra_include_dirs))]
fn locate_toolchain(
    nvidia_dirs: Vec<PathBuf>,
    cuda_home: Option<PathBuf>,
    extra_include_dirs: Vec<PathBuf>,
) -> PyResult<(PathBuf, Vec<PathBuf>)> {
    let t = Toolchain::locate(&nvidia_dirs, cuda_home.as_deref(), &extra_include_dirs)?;
    Ok((t.library, t.include_dirs))
}

/// The NVRTC target MLX uses for a compute capability (`sm_90a` for 9.0).
#[pyfunction]
fn device_arch(major: u32, minor: u32) -> String {
    nvrtc::device_arch(major, minor)
}

/// A cubin ready for `mx.fast.precompiled_cuda_kernel`, and how the cache served it.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct CompiledKernel {
    #[pyo3(get)]
    symbol: String,
    #[pyo3(get)]
    cubin: Py<PyBytes>,
    /// `"hit"`, `"miss"`, `"corrupt"` (recompiled) or `"disabled"` (no cache dir).
    #[pyo3(get)]
    cache: &'static str,
}

fn compiled(py: Python<'_>, c: nvrtc::Compiled) -> CompiledKernel {
    CompiledKernel {
        symbol: c.symbol,
        cubin: PyBytes::new(py, &c.cubin).unbind(),
        cache: c.outcome.name(),
    }
}

/// NVRTC loaded from `library`, targeting `arch`, caching cubins under `cache_dir`.
#[pyclass(frozen, module = "zmlx_rs._native")]
pub struct KernelCompiler {
    inner: Compiler,
}

#[pymethods]
impl KernelCompiler {
    #[new]
    #[pyo3(signature = (library, include_dirs, arch, cache_dir))]
    fn new(
        py: Python<'_>,
        library: PathBuf,
        include_dirs: Vec<PathBuf>,
        arch: &str,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let toolchain = Toolchain {
            library,
            include_dirs,
        };
        let inner = py.detach(|| Compiler::new(&toolchain, arch, cache_dir))?;
        Ok(KernelCompiler { inner })
    }

    #[getter]
    fn arch(&self) -> &str {
        self.inner.arch()
    }

    #[getter]
    fn nvrtc_version(&self) -> (i32, i32) {
        self.inner.nvrtc().version()
    }

    #[getter]
    fn library(&self) -> PathBuf {
        self.inner.nvrtc().path().to_path_buf()
    }

    #[getter]
    fn cache_dir(&self) -> Option<PathBuf> {
        self.inner.cache().map(|c| c.dir().to_path_buf())
    }

    /// The cubin for `spec`, from the disk cache or compiled now (GIL released).
    fn compile(&self, py: Python<'_>, spec: &Specialisation) -> PyResult<CompiledKernel> {
        let c = py.detach(|| self.inner.compile(&spec.inner))?;
        Ok(compiled(py, c))
    }

    /// Any translation unit whose `extern "C"` entry point is `symbol`, through the cache.
    fn compile_unit(&self, py: Python<'_>, symbol: &str, source: &str) -> PyResult<CompiledKernel> {
        let c = py.detach(|| self.inner.compile_unit(symbol, source))?;
        Ok(compiled(py, c))
    }

    /// Compiles any translation unit with this compiler's flags, uncached; `headers` are
    /// in-memory `(include name, contents)` pairs.
    #[pyo3(signature = (source, file_name, headers=Vec::new()))]
    fn compile_source<'py>(
        &self,
        py: Python<'py>,
        source: &str,
        file_name: &str,
        headers: Vec<(String, String)>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let cubin = py.detach(|| {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_str()))
                .collect();
            self.inner.compile_source(source, file_name, &h)
        })?;
        Ok(PyBytes::new(py, &cubin))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Specialisation>()?;
    m.add_class::<CompiledKernel>()?;
    m.add_class::<KernelCompiler>()?;
    m.add_function(wrap_pyfunction!(specialisation, m)?)?;
    m.add_function(wrap_pyfunction!(specialisations, m)?)?;
    m.add_function(wrap_pyfunction!(locate_toolchain, m)?)?;
    m.add_function(wrap_pyfunction!(device_arch, m)?)?;
    Ok(())
}
