//! NVRTC, loaded at run time: compiles the catalog's kernels to cubin for one GPU architecture
//! with flags we choose, and caches the result on disk ([`cache`]). NVRTC needs no GPU, so the
//! same code compile-checks every kernel on a CPU-only machine.
//!
//! The library comes from the NVIDIA pip packages MLX-CUDA depends on (`nvidia/cu13`) or from
//! a CUDA toolkit; nothing links against it, so the extension imports without CUDA.

pub mod cache;

use crate::error::{Error, Result};
use crate::kernels::render::Specialisation;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

pub use cache::{CacheOutcome, KernelCache};

type Status = c_int;
type Program = *mut c_void;
const SUCCESS: Status = 0;

/// Flags every kernel is compiled with. `-O3` is ptxas' default, spelled out so the cache key
/// names it. No fast math: the kernels promise fp32 results within 1e-5 of a float64
/// reference, and `--use_fast_math` swaps expf/erff/tanhf for approximations that miss it.
pub const BASE_FLAGS: &[&str] = &["--std=c++17", "--dopt=on", "--ptxas-options=-O3"];

/// The NVRTC entry points we call, resolved once from the shared library.
pub struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    num_archs: unsafe extern "C" fn(*mut c_int) -> Status,
    archs: unsafe extern "C" fn(*mut c_int) -> Status,
    // Keeps the function pointers above valid; last so it drops after them.
    _library: libloading::Library,
}

fn backend(msg: impl Into<String>) -> Error {
    Error::Backend(msg.into())
}

impl Nvrtc {
    /// Loads NVRTC from `path` (e.g. `.../nvidia/cu13/lib/libnvrtc.so.13`).
    pub fn load(path: &Path) -> Result<Nvrtc> {
        let fail = |e: libloading::Error| {
            backend(format!("cannot load NVRTC from {}: {e}", path.display()))
        };
        // SAFETY: loading NVRTC runs no initialisers with preconditions; each symbol is
        // resolved with the signature nvrtc.h declares for it.
        unsafe {
            let lib = libloading::Library::new(path).map_err(fail)?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes()).map_err(fail)?
                };
            }
            let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status =
                sym!("nvrtcVersion");
            let mut nvrtc = Nvrtc {
                path: path.to_path_buf(),
                version: (0, 0),
                error_string: sym!("nvrtcGetErrorString"),
                create: sym!("nvrtcCreateProgram"),
                destroy: sym!("nvrtcDestroyProgram"),
                compile: sym!("nvrtcCompileProgram"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                cubin_size: sym!("nvrtcGetCUBINSize"),
                cubin: sym!("nvrtcGetCUBIN"),
                num_archs: sym!("nvrtcGetNumSupportedArchs"),
                archs: sym!("nvrtcGetSupportedArchs"),
                _library: lib,
            };
            let (mut major, mut minor) = (0, 0);
            nvrtc.check("nvrtcVersion", version_fn(&mut major, &mut minor))?;
            nvrtc.version = (major, minor);
            Ok(nvrtc)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// NVRTC's `(major, minor)` version; part of every cache key.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The `sm_XX` numbers this NVRTC can generate code for.
    pub fn supported_archs(&self) -> Result<Vec<i32>> {
        let mut n: c_int = 0;
        // SAFETY: NVRTC writes one int, then `n` ints into a buffer of that size.
        unsafe {
            self.check("nvrtcGetNumSupportedArchs", (self.num_archs)(&mut n))?;
            let mut archs = vec![0; n.max(0) as usize];
            self.check("nvrtcGetSupportedArchs", (self.archs)(archs.as_mut_ptr()))?;
            Ok(archs)
        }
    }

    fn check(&self, what: &str, status: Status) -> Result<()> {
        if status == SUCCESS {
            return Ok(());
        }
        // SAFETY: NVRTC returns a static C string for every status code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(status)) };
        Err(backend(format!("{what} failed: {}", msg.to_string_lossy())))
    }

    /// Compiles one translation unit to a cubin. `headers` are in-memory `(include name,
    /// contents)` pairs; a compile error returns NVRTC's log.
    pub fn compile_cubin(
        &self,
        source: &str,
        file_name: &str,
        options: &[String],
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| backend(format!("NUL byte in NVRTC input '{file_name}'")))
        };
        let src = cstr(source)?;
        let name = cstr(file_name)?;
        let header_src = headers
            .iter()
            .map(|(_, s)| cstr(s))
            .collect::<Result<Vec<_>>>()?;
        let header_names = headers
            .iter()
            .map(|(n, _)| cstr(n))
            .collect::<Result<Vec<_>>>()?;
        let header_src_ptrs: Vec<_> = header_src.iter().map(|s| s.as_ptr()).collect();
        let header_name_ptrs: Vec<_> = header_names.iter().map(|s| s.as_ptr()).collect();
        let opts = options
            .iter()
            .map(|o| cstr(o))
            .collect::<Result<Vec<_>>>()?;
        let opt_ptrs: Vec<_> = opts.iter().map(|s| s.as_ptr()).collect();

        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer handed to NVRTC points into a CString or Vec alive for the
        // whole call; the program is destroyed exactly once below.
        unsafe {
            self.check(
                "nvrtcCreateProgram",
                (self.create)(
                    &mut prog,
                    src.as_ptr(),
                    name.as_ptr(),
                    headers.len() as c_int,
                    header_src_ptrs.as_ptr(),
                    header_name_ptrs.as_ptr(),
                ),
            )?;
            let result = self.compile_program(prog, &opt_ptrs, file_name);
            (self.destroy)(&mut prog);
            result
        }
    }

    /// # Safety
    /// `prog` must be a live program from `nvrtcCreateProgram`.
    unsafe fn compile_program(
        &self,
        prog: Program,
        options: &[*const c_char],
        file_name: &str,
    ) -> Result<Vec<u8>> {
        let status = (self.compile)(prog, options.len() as c_int, options.as_ptr());
        if status != SUCCESS {
            let mut size = 0usize;
            self.check("nvrtcGetProgramLogSize", (self.log_size)(prog, &mut size))?;
            let mut log = vec![0u8; size + 1];
            self.check(
                "nvrtcGetProgramLog",
                (self.log)(prog, log.as_mut_ptr().cast()),
            )?;
            let log = CStr::from_bytes_until_nul(&log)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(backend(format!(
                "NVRTC {}.{} could not compile {file_name}:\n{}",
                self.version.0,
                self.version.1,
                log.trim_end()
            )));
        }
        let mut size = 0usize;
        self.check("nvrtcGetCUBINSize", (self.cubin_size)(prog, &mut size))?;
        let mut cubin = vec![0u8; size];
        self.check(
            "nvrtcGetCUBIN",
            (self.cubin)(prog, cubin.as_mut_ptr().cast()),
        )?;
        Ok(cubin)
    }
}

/// Where NVRTC and the headers the kernels include were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub library: PathBuf,
    pub include_dirs: Vec<PathBuf>,
}

/// Headers our kernels need, with the CUDA-13 layout that provides them.
const REQUIRED_HEADERS: &[&str] = &["cuda_fp16.h", "cuda_bf16.h", "nv/target"];

impl Toolchain {
    /// Finds NVRTC 13 and the CUDA headers. `nvidia_dirs` are the `nvidia` pip namespace
    /// directories (`site-packages/nvidia`), searched first; then `cuda_home`; then
    /// `extra_include_dirs` (MLX-CUDA's bundled CCCL) for headers only.
    pub fn locate(
        nvidia_dirs: &[PathBuf],
        cuda_home: Option<&Path>,
        extra_include_dirs: &[PathBuf],
    ) -> Result<Toolchain> {
        let mut libs = Vec::new();
        let mut includes = Vec::new();
        for root in nvidia_dirs {
            for pkg in ["cu13", "cuda_nvrtc"] {
                libs.push(root.join(pkg).join("lib").join("libnvrtc.so.13"));
            }
            for dir in [
                "cu13/include",
                "cu13/include/cccl",
                "cuda_runtime/include",
                "cuda_cccl/include",
            ] {
                includes.push(root.join(dir));
            }
        }
        if let Some(home) = cuda_home {
            for lib in [
                "lib64/libnvrtc.so.13",
                "lib64/libnvrtc.so",
                "lib/libnvrtc.so.13",
            ] {
                libs.push(home.join(lib));
            }
            includes.push(home.join("include"));
            includes.push(home.join("include").join("cccl"));
        }
        includes.extend(extra_include_dirs.iter().cloned());

        let library = libs.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            backend(format!(
                "NVRTC not found (install nvidia-cuda-nvrtc==13.* or set CUDA_HOME); looked at {}",
                paths(&libs)
            ))
        })?;
        let mut include_dirs: Vec<PathBuf> = Vec::new();
        for dir in includes {
            if dir.is_dir() && !include_dirs.contains(&dir) {
                include_dirs.push(dir);
            }
        }
        for header in REQUIRED_HEADERS {
            if !include_dirs.iter().any(|d| d.join(header).is_file()) {
                return Err(backend(format!(
                    "CUDA header <{header}> not found (install nvidia-cuda-runtime==13.* and \
                     nvidia-cuda-cccl==13.*, or set CUDA_HOME); looked in {}",
                    paths(&include_dirs)
                )));
            }
        }
        Ok(Toolchain {
            library,
            include_dirs,
        })
    }
}

fn paths(p: &[PathBuf]) -> String {
    if p.is_empty() {
        return "nothing".to_string();
    }
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The architecture MLX itself targets for a device: `sm_XY`, with the `a` feature suffix
/// from Hopper on (a cubin for `sm_90a` loads only on compute capability 9.0).
pub fn device_arch(major: u32, minor: u32) -> String {
    let suffix = if major >= 9 { "a" } else { "" };
    format!("sm_{major}{minor}{suffix}")
}

/// A compiled specialisation, ready for `mx.fast.precompiled_cuda_kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub symbol: String,
    pub cubin: Vec<u8>,
    pub outcome: CacheOutcome,
}

/// NVRTC, the headers, the target architecture and the disk cache: everything that turns a
/// [`Specialisation`] into a cubin.
pub struct Compiler {
    nvrtc: Nvrtc,
    arch: String,
    options: Vec<String>,
    cache: Option<KernelCache>,
}

impl Compiler {
    /// `arch` is `sm_XY[a]`; `cache_dir` of `None` compiles every time (compile checks).
    pub fn new(toolchain: &Toolchain, arch: &str, cache_dir: Option<PathBuf>) -> Result<Compiler> {
        let nvrtc = Nvrtc::load(&toolchain.library)?;
        let number: i32 = arch
            .strip_prefix("sm_")
            .map(|s| s.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::value(
                    "KernelCompiler",
                    "arch",
                    "'sm_XY' or 'sm_XYa'",
                    format!("'{arch}'"),
                )
            })?;
        let supported = nvrtc.supported_archs()?;
        if !supported.contains(&number) {
            return Err(backend(format!(
                "NVRTC {}.{} cannot target {arch}; it supports sm_{supported:?}",
                nvrtc.version.0, nvrtc.version.1
            )));
        }
        let mut options = vec![format!("--gpu-architecture={arch}")];
        options.extend(BASE_FLAGS.iter().map(|f| f.to_string()));
        options.extend(
            toolchain
                .include_dirs
                .iter()
                .map(|d| format!("--include-path={}", d.display())),
        );
        Ok(Compiler {
            nvrtc,
            arch: arch.to_string(),
            options,
            cache: cache_dir.map(KernelCache::new),
        })
    }

    pub fn nvrtc(&self) -> &Nvrtc {
        &self.nvrtc
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn cache(&self) -> Option<&KernelCache> {
        self.cache.as_ref()
    }

    /// What decides a cubin's bytes besides the source: arch, NVRTC version, flags. Include
    /// paths are left out (where headers live does not change the code).
    fn key_flags(&self) -> Vec<String> {
        let (major, minor) = self.nvrtc.version;
        let mut k = vec![self.arch.clone(), format!("nvrtc {major}.{minor}")];
        k.extend(
            self.options
                .iter()
                .filter(|o| !o.starts_with("--include-path="))
                .cloned(),
        );
        k
    }

    /// Compiles any translation unit with this compiler's flags, uncached.
    pub fn compile_source(
        &self,
        source: &str,
        file_name: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>> {
        self.nvrtc
            .compile_cubin(source, file_name, &self.options, headers)
    }

    /// The cubin for one specialisation, from the disk cache or compiled (and then cached).
    pub fn compile(&self, spec: &Specialisation) -> Result<Compiled> {
        self.compile_unit(&spec.symbol(), &spec.precompiled_source()?)
    }

    /// The cubin for a translation unit whose entry point is `symbol`, through the cache.
    pub fn compile_unit(&self, symbol: &str, source: &str) -> Result<Compiled> {
        let file_name = format!("{symbol}.cu");
        let build = || self.compile_source(source, &file_name, &[]);
        let (cubin, outcome) = match &self.cache {
            Some(cache) => cache.get_or_insert(symbol, source, &self.key_flags(), build)?,
            None => (build()?, CacheOutcome::Disabled),
        };
        Ok(Compiled {
            symbol: symbol.to_string(),
            cubin,
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"").unwrap();
    }

    #[test]
    fn locates_the_pip_layout_and_requires_every_header() {
        let dir = tempfile::tempdir().unwrap();
        let nvidia = dir.path().join("nvidia");
        touch(&nvidia.join("cu13/lib/libnvrtc.so.13"));
        touch(&nvidia.join("cu13/include/cuda_fp16.h"));
        touch(&nvidia.join("cu13/include/cuda_bf16.h"));
        let e = Toolchain::locate(std::slice::from_ref(&nvidia), None, &[]).unwrap_err();
        assert!(e.to_string().contains("<nv/target>"), "{e}");
        // MLX-CUDA's bundled CCCL provides it when nvidia-cuda-cccl is absent.
        let mlx_cccl = dir.path().join("mlx/include/cccl");
        touch(&mlx_cccl.join("nv/target"));
        let t = Toolchain::locate(
            std::slice::from_ref(&nvidia),
            None,
            std::slice::from_ref(&mlx_cccl),
        )
        .unwrap();
        assert_eq!(t.library, nvidia.join("cu13/lib/libnvrtc.so.13"));
        assert_eq!(t.include_dirs, vec![nvidia.join("cu13/include"), mlx_cccl]);
    }

    #[test]
    fn falls_back_to_cuda_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("cuda");
        touch(&home.join("lib64/libnvrtc.so"));
        for h in REQUIRED_HEADERS {
            touch(&home.join("include").join(h));
        }
        let t = Toolchain::locate(&[dir.path().join("missing")], Some(&home), &[]).unwrap();
        assert_eq!(t.library, home.join("lib64/libnvrtc.so"));
        let e = Toolchain::locate(&[], None, &[]).unwrap_err();
        assert!(e.to_string().contains("nvidia-cuda-nvrtc==13"), "{e}");
    }

    #[test]
    fn arch_follows_mlx() {
        assert_eq!(device_arch(9, 0), "sm_90a");
        assert_eq!(device_arch(10, 0), "sm_100a");
        assert_eq!(device_arch(8, 9), "sm_89");
    }
}
