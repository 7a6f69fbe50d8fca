"""Precompiled kernels: the Rust core compiles each kernel specialisation with NVRTC once per
machine (cubin for the device's architecture, our flags) and caches it on disk; the kernels
then launch through `mx.fast.precompiled_cuda_kernel` with no JIT in the process.

`mx.fast.cuda_kernel` stays the fallback wherever this path is unavailable (no NVRTC 13 or
CUDA headers, an architecture NVRTC cannot target, a compile error, a cubin the driver rejects):
`report()` says which path runs and why, and the `zmlx_rs.compile` logger records it at debug
level.

Cache directory: `$ZMLX_RS_CACHE_DIR`, else the platform cache dir (`~/.cache/zmlx_rs/kernels`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import mlx
import mlx.core as mx

from zmlx_rs import _native

__all__ = ["cache_dir", "compiler", "precompiled", "report", "use_precompiled"]

CACHE_DIR_ENV = "ZMLX_RS_CACHE_DIR"
log = logging.getLogger("zmlx_rs.compile")

# The smallest kernel: proves once per process that the driver loads this NVRTC's cubins.
_PROBE_SYMBOL = "zmlx_probe"
_PROBE_SOURCE = (
    'extern "C" __global__ void zmlx_probe(const float* x, float* out, const int n) {\n'
    "  if (threadIdx.x == 0) out[0] = x[0] + static_cast<float>(n);\n"
    "}\n"
)


def cache_dir() -> Path:
    """Where cubins are cached: `$ZMLX_RS_CACHE_DIR` or the platform's user cache dir."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "zmlx_rs" / "kernels"


def _nvidia_dirs() -> list[Path]:
    """The `nvidia` pip namespace dirs (nvidia-cuda-nvrtc, -runtime, -cccl install there)."""
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    # MLX-CUDA finds them beside its own package; so do we, whatever sys.path says.
    beside_mlx = Path(mx.__file__).resolve().parent.parent / "nvidia"
    if beside_mlx.is_dir() and beside_mlx not in dirs:
        dirs.append(beside_mlx)
    return dirs


def _mlx_include_dirs() -> list[Path]:
    """MLX-CUDA ships CCCL (which cuda_fp16.h needs for <nv/target>) under mlx/include."""
    return [Path(p) / "include" / "cccl" for p in mlx.__path__]


def locate() -> tuple[Path, list[Path]]:
    """`(libnvrtc, include_dirs)`: the pip packages first, then `$CUDA_HOME` (or `$CUDA_PATH`,
    else /usr/local/cuda, as MLX looks); raises BackendError naming what is missing."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return _native.locate_toolchain(_nvidia_dirs(), Path(home), _mlx_include_dirs())


DEFAULT_OFF = "off by default (mx.fast.cuda_kernel is faster per call); use_precompiled(True)"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Off by default: on an H200 a precompiled launch evaluates 1.2-1.4x slower per call
        # than the same kernel through mx.fast.cuda_kernel (MLX hashes and copies the cubin
        # on every evaluation; benchmarks/results/precompiled.json), and decode is bound by
        # per-call cost. Its win is cold start (0.1 s vs 10 s): use_precompiled(True).
        self.enabled = False
        self.compiler: Any = None
        self.reason: str | None = DEFAULT_OFF  # why the precompiled path is off, when it is
        self.ready = True
        self.kernels: dict[tuple, Any] = {}  # specialisation key -> CompiledKernel | None
        self.fallbacks: dict[str, str] = {}  # symbol -> why it runs through the JIT
        self.cache = Counter[str]()
        self.toolchain: dict[str, str] = {}  # NVRTC version, library, arch once started


_state = _State()


def use_precompiled(enabled: bool) -> None:
    """Turns the precompiled path on or off for kernels not yet launched in this process."""
    with _state.lock:
        _state.enabled = enabled
        _state.compiler = None
        _state.kernels.clear()
        # Off needs no start; on starts (loads NVRTC, probes) at the next launch.
        _state.ready = not enabled
        _state.reason = None if enabled else "turned off (use_precompiled(False))"


def _disable(reason: str) -> None:
    _state.reason = reason
    _state.compiler = None
    log.debug("precompiled kernels off, mx.fast.cuda_kernel instead: %s", reason)


def _compute_capability(info: dict[str, Any]) -> tuple[int, int]:
    """(major, minor) from `mx.device_info()`; older MLX only names the arch (`sm_90`)."""
    if "compute_capability_major" in info:
        return int(info["compute_capability_major"]), int(info["compute_capability_minor"])
    arch = str(info.get("architecture", ""))
    if arch.startswith("sm_") and arch[3:].isdigit():
        return int(arch[3:-1]), int(arch[-1])
    raise _native.BackendError(f"cannot tell the GPU's compute capability from {info}")


def _start() -> None:
    """Loads NVRTC for the default device and runs the probe kernel; on any failure records
    why and leaves the JIT path on."""
    _state.ready = True
    if not _state.enabled:
        return
    if not hasattr(mx.fast, "precompiled_cuda_kernel"):
        return _disable("this MLX has no mx.fast.precompiled_cuda_kernel")
    try:
        arch = _native.device_arch(*_compute_capability(mx.device_info()))
        library, includes = locate()
        comp = _native.KernelCompiler(library, includes, arch, cache_dir())
        probe = comp.compile_unit(_PROBE_SYMBOL, _PROBE_SOURCE)
        _state.cache[probe.cache] += 1
        x = mx.array([1.5], dtype=mx.float32)
        (out,) = mx.fast.precompiled_cuda_kernel(
            name=probe.symbol,
            compiled_source=probe.cubin,
            inputs=[x],
            output_shapes=[(1,)],
            output_dtypes=[mx.float32],
            scalars=[2],
            grid=(1, 1, 1),
            threadgroup=(1, 1, 1),
            stream=mx.gpu,
        )
        got = out.item()
        if got != 3.5:
            return _disable(f"probe kernel returned {got}, expected 3.5")
    except Exception as e:  # whatever failed, the JIT path still works
        return _disable(f"{type(e).__name__}: {e}")
    _state.compiler = comp
    _state.toolchain = {
        "nvrtc": "{}.{}".format(*comp.nvrtc_version),
        "library": str(comp.library),
        "arch": comp.arch,
    }
    log.debug(
        "precompiled kernels on: NVRTC %s.%s (%s) for %s, cache %s",
        *comp.nvrtc_version,
        comp.library,
        comp.arch,
        comp.cache_dir,
    )


def compiler() -> Any:
    """The process's `KernelCompiler`, or None when the precompiled path is off (see report)."""
    if not _state.ready:
        with _state.lock:
            if not _state.ready:
                _start()
    return _state.compiler


def precompiled(launch: _native.Launch, input_dtypes: list[str]) -> tuple[str, bytes] | None:
    """`(symbol, cubin)` for a launch on inputs of these dtypes, compiled or read
    from the disk cache once per process; None sends this launch to `mx.fast.cuda_kernel`."""
    comp = compiler()
    if comp is None:
        return None
    key = (launch.kernel, tuple(launch.template), tuple(input_dtypes))
    with _state.lock:
        if key in _state.kernels:
            return _state.kernels[key]
        spec = _native.specialisation(launch, input_dtypes)
        try:
            c = comp.compile(spec)
        except _native.ZmlxError as e:  # a compile error: this kernel runs through the JIT
            _state.fallbacks[spec.symbol] = f"{type(e).__name__}: {e}"
            log.debug("%s falls back to mx.fast.cuda_kernel: %s", spec.symbol, e)
            _state.kernels[key] = None
            return None
        _state.cache[c.cache] += 1
        log.debug("%s: cubin %d bytes, cache %s", c.symbol, len(c.cubin), c.cache)
        got = (c.symbol, c.cubin)
        _state.kernels[key] = got
        return got


def report() -> dict[str, Any]:
    """Which launch path the kernels take and why: for a PatchReport or a bug report."""
    return {
        "path": "precompiled" if _state.compiler is not None else "cuda_kernel",
        "reason": _state.reason if _state.ready else "not started (no kernel launched yet)",
        **_state.toolchain,
        "cache_dir": str(cache_dir()),
        "cache": dict(_state.cache),
        "fallbacks": dict(_state.fallbacks),
    }
