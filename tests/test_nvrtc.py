"""NVRTC compile checks (no GPU needed), the cubin cache, fallbacks, and on a GPU the
precompiled launch path against the `mx.fast.cuda_kernel` one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import pytest
from zmlx_rs import _compile, _native
from zmlx_rs import kernels as K

ARCH = "sm_90a"  # the lent H100/H200; NVRTC compiles for it without one
SPECS = _native.specialisations()

# MLX's device header is compiled into libmlx, not shipped: this stand-in declares what a
# generated cuda_kernel signature names, so the JIT rendering compile-checks too.
MLX_UTILS_STANDIN = (
    "mlx/backend/cuda/device/utils.cuh",
    textwrap.dedent(
        """\
        #pragma once
        #include <cuda/std/array>
        #include <cuda/std/cstdint>
        #include <cuda_bf16.h>
        #include <cuda_fp16.h>
        namespace mlx::core::cu {
        constexpr int MAX_NDIM = 10;
        using Shape = cuda::std::array<int32_t, MAX_NDIM>;
        using Strides = cuda::std::array<int64_t, MAX_NDIM>;
        }  // namespace mlx::core::cu
        """
    ),
)
# The real header costs seconds per compile and our kernels use none of it.
COOPERATIVE_GROUPS_STANDIN = ("cooperative_groups.h", "namespace cooperative_groups {}\n")


@pytest.fixture(scope="module")
def toolchain():
    # CI installs nvidia-cuda-nvrtc/-runtime/-cccl 13 (see .ci/run): a missing toolchain must
    # fail here, or a kernel source error would pass unnoticed.
    return _compile.locate()


def compiler(toolchain, cache_dir=None):
    library, includes = toolchain
    return _native.KernelCompiler(library, includes, ARCH, cache_dir)


def one_unit(specs, sources, prefix):
    """The specialisations' sources as one translation unit: their shared `prefix` (the
    headers) once, then each kernel. Parsing the CUDA headers dominates NVRTC's time, so this
    checks the same code in a fraction of it."""
    assert all(src.startswith(prefix) for src in sources)
    symbols = [s.symbol for s in specs]
    assert len(set(symbols)) == len(symbols), "entry points would collide"
    return prefix + "".join(src[len(prefix) :] for src in sources)


def check_all(compile_unit, groups):
    def one(item):
        name, source = item
        try:
            compile_unit(source, name + ".cu")
        except _native.BackendError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return [f for f in pool.map(one, groups.items()) if f]


def by_kernel(specs):
    groups: dict[str, list] = {}
    for s in specs:
        groups.setdefault(s.kernel, []).append(s)
    return groups


def test_specialisations_cover_every_kernel():
    assert set(by_kernel(SPECS)) == set(_native.kernel_names())


def test_every_kernel_compiles_for_precompiled_launch(toolchain):
    comp = compiler(toolchain)
    units = {
        k: one_unit(v, [s.source for s in v], _native.kernel_spec(k).header)
        for k, v in by_kernel(SPECS).items()
    }
    failures = check_all(comp.compile_source, units)
    assert not failures, "\n\n".join(failures)


def mlx_units(specs):
    """One unit per distinct header (kernels sharing helpers compile together)."""
    groups: dict[str, tuple[list, list]] = {}
    for s in specs:
        src = s.mlx_source
        prefix = src[: src.index("namespace mlx::core::cu {")]
        groups.setdefault(prefix, ([], []))
        groups[prefix][0].append(s)
        groups[prefix][1].append(src)
    return {
        "mlx_" + specs[0].kernel: one_unit(specs, sources, prefix)
        for prefix, (specs, sources) in groups.items()
    }


def test_every_kernel_compiles_as_mlx_wraps_it(toolchain):
    # Bodies are shared with the precompiled rendering (checked in every specialisation
    # above); here only MLX's wrapping differs, so one specialisation per kernel is enough.
    comp = compiler(toolchain)
    one_each = [v[0] for v in by_kernel(SPECS).values()]
    failures = check_all(
        lambda src, name: comp.compile_source(
            src, name, [MLX_UTILS_STANDIN, COOPERATIVE_GROUPS_STANDIN]
        ),
        mlx_units(one_each),
    )
    assert not failures, "\n\n".join(failures)


def test_each_specialisation_is_its_own_translation_unit(toolchain):
    # The unit the precompiled path really compiles, for one specialisation of each kernel.
    comp = compiler(toolchain)
    for specs in by_kernel(SPECS).values():
        assert comp.compile(specs[-1]).cubin.startswith(b"\x7fELF")


def test_compile_errors_carry_the_nvrtc_log(toolchain):
    comp = compiler(toolchain)
    with pytest.raises(_native.BackendError, match=r"broken\.cu.*error"):
        comp.compile_source('extern "C" __global__ void k() { int x = ; }', "broken.cu")


def test_cache_miss_hit_and_corruption(toolchain, tmp_path):
    spec = SPECS[0]
    first = compiler(toolchain, tmp_path).compile(spec)
    assert first.cache == "miss"
    (entry,) = tmp_path.iterdir()
    assert entry.name.startswith(spec.symbol + "-") and entry.suffix == ".cubin"
    again = compiler(toolchain, tmp_path).compile(spec)
    assert (again.cache, again.cubin) == ("hit", first.cubin)
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    fixed = compiler(toolchain, tmp_path).compile(spec)
    assert (fixed.cache, fixed.cubin) == ("corrupt", first.cubin)
    assert compiler(toolchain, tmp_path).compile(spec).cache == "hit"


def test_cache_keys_on_arch(toolchain, tmp_path):
    library, includes = toolchain
    spec = SPECS[0]
    _native.KernelCompiler(library, includes, "sm_90a", tmp_path).compile(spec)
    other = _native.KernelCompiler(library, includes, "sm_80", tmp_path).compile(spec)
    assert other.cache == "miss"
    assert len(list(tmp_path.iterdir())) == 2


def test_concurrent_processes_share_one_cache_entry(toolchain, tmp_path):
    library, includes = toolchain
    script = textwrap.dedent(
        f"""
        from zmlx_rs import _native
        spec = _native.specialisations()[1]
        c = _native.KernelCompiler({str(library)!r}, {[str(i) for i in includes]!r},
                                   {ARCH!r}, {str(tmp_path)!r})
        print(c.compile(spec).cache)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outcomes) <= {"miss", "hit"}
    (entry,) = tmp_path.iterdir()  # one whole entry, no temporary files left
    assert compiler(toolchain, tmp_path).compile(SPECS[1]).cache == "hit"
    assert entry.suffix == ".cubin"


def test_unknown_arch_is_a_typed_error(toolchain):
    library, includes = toolchain
    with pytest.raises(_native.ZmlxError, match="arch"):
        _native.KernelCompiler(library, includes, "hopper", None)
    with pytest.raises(_native.BackendError, match="cannot target sm_1"):
        _native.KernelCompiler(library, includes, "sm_1", None)


def test_missing_toolchain_names_what_to_install(tmp_path):
    with pytest.raises(_native.BackendError, match="nvidia-cuda-nvrtc"):
        _native.locate_toolchain([tmp_path], None, [])


def test_device_arch_matches_mlx():
    assert _native.device_arch(9, 0) == "sm_90a"
    assert _native.device_arch(8, 6) == "sm_86"


def test_compute_capability_from_device_info():
    info = {"compute_capability_major": 9, "compute_capability_minor": 0}
    assert _compile._compute_capability(info) == (9, 0)
    assert _compile._compute_capability({"architecture": "sm_120"}) == (12, 0)
    with pytest.raises(_native.BackendError, match="compute capability"):
        _compile._compute_capability({"architecture": "x86_64"})


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(_compile.CACHE_DIR_ENV, str(tmp_path))
    assert _compile.cache_dir() == tmp_path


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(_compile, "_state", _compile._State())
    return _compile._state


def test_a_kernel_that_fails_to_compile_falls_back(fresh_state, caplog):
    class Failing:
        def compile(self, spec):
            raise _native.BackendError("NVRTC could not compile: planted")

    fresh_state.ready, fresh_state.compiler = True, Failing()
    launch = _native.plan_glu("silu", [2, 8], "float32", [2, 8], "float32")
    with caplog.at_level("DEBUG", logger="zmlx_rs.compile"):
        assert _compile.precompiled(launch, ["float32", "float32"]) is None
    report = _compile.report()
    assert "planted" in report["fallbacks"]["zmlx_glu_float32_4_0"]
    assert "falls back to mx.fast.cuda_kernel" in caplog.text


@pytest.mark.skipif(mx.cuda.is_available(), reason="checks the no-GPU start")
def test_without_a_gpu_the_path_is_off_with_a_reason(fresh_state):
    _compile.use_precompiled(True)
    assert _compile.compiler() is None
    report = _compile.report()
    assert report["path"] == "cuda_kernel"
    assert report["reason"]


def test_turning_precompiled_off_is_reported(fresh_state):
    _compile.use_precompiled(False)
    assert _compile.compiler() is None
    assert "use_precompiled(False)" in _compile.report()["reason"]


# ---------------------------------------------------------------------------------------
# On the GPU: the precompiled launch runs and agrees with the JIT kernel.


@pytest.fixture
def precompiled_on():
    _compile.use_precompiled(True)
    yield
    _compile.use_precompiled(False)
    _compile._state.reason = _compile.DEFAULT_OFF


def both_paths(plan):
    return K._Kernel(plan), K._Kernel(plan, precompiled=False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_precompiled_glu_matches_jit(dtype, precompiled_on):
    pre, jit = both_paths(_native.plan_glu)
    gate = mx.random.normal((3, 1001)).astype(dtype)
    up = mx.random.normal((3, 1001)).astype(dtype)
    name = K._DTYPE_NAMES[dtype]
    args = ("silu", [3, 1001], name, [3, 1001], name)
    a = pre([gate, up], pre.launch(("k",), *args))[0]
    b = jit([gate, up], jit.launch(("k",), *args))[0]
    assert pre._launches[("k",)].precompiled, _compile.report()
    assert mx.array_equal(a, b).item()


@pytest.mark.cuda
def test_precompiled_ops_match_jit(precompiled_on):
    gating_pre, gating_jit = both_paths(_native.plan_moe_gating)
    logits = mx.random.normal((5, 128)).astype(mx.bfloat16)
    args = ([5, 128], "bfloat16", 8, "softmax", True, None, None, 1.0, "higher")
    s1, i1 = gating_pre([logits], gating_pre.launch(("k",), *args))
    s2, i2 = gating_jit([logits], gating_jit.launch(("k",), *args))
    assert mx.array_equal(i1, i2).item() and mx.array_equal(s1, s2).item()

    add_pre, add_jit = both_paths(_native.plan_gather_add)
    y = mx.random.normal((5, 8, 2048)).astype(mx.bfloat16)
    scores = mx.random.uniform(shape=(5, 8)).astype(mx.bfloat16)
    args = ([5, 8, 2048], "bfloat16", [5, 8], "bfloat16")
    a = add_pre([y, scores], add_pre.launch(("k",), *args))[0]
    b = add_jit([y, scores], add_jit.launch(("k",), *args))[0]
    assert mx.array_equal(a, b).item()


@pytest.mark.cuda
def test_public_ops_run_through_the_jit_by_default(fresh_state):
    x = mx.random.normal((4, 256)).astype(mx.bfloat16)
    mx.eval(K.swiglu(x, x, kernel=True))
    report = _compile.report()
    assert report["path"] == "cuda_kernel" and "by default" in report["reason"], report


@pytest.mark.cuda
def test_public_ops_run_precompiled_when_asked(fresh_state):
    _compile.use_precompiled(True)
    # A launch signature no other test uses: the switch applies to launches not yet resolved
    # in this process (an earlier test's (4, 256) swiglu stayed on the JIT on the H100).
    # kernel=True: below GLU_KERNEL_MIN_SIZE swiglu would run the compiled MLX reference.
    x = mx.random.normal((3, 4099)).astype(mx.bfloat16)
    mx.eval(K.swiglu(x, x, kernel=True))
    report = _compile.report()
    assert report["path"] == "precompiled", report
    assert not report["fallbacks"]


@pytest.mark.cuda
def test_a_fresh_process_reads_the_warm_cache(tmp_path):
    script = textwrap.dedent(
        """
        import mlx.core as mx
        from zmlx_rs import _compile, kernels
        _compile.use_precompiled(True)
        x = mx.ones((2, 64), dtype=mx.float16)
        h = mx.concatenate([x, x], -1)
        mx.eval(kernels.swiglu(x, x, kernel=True), kernels.swiglu_packed(h))
        print(sorted(_compile.report()["cache"].items()))
        """
    )
    env = {**os.environ, _compile.CACHE_DIR_ENV: str(tmp_path)}
    run = [sys.executable, "-c", script]
    cold = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    warm = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert cold.strip() == "[('miss', 3)]", cold
    assert warm.strip() == "[('hit', 3)]", warm
    assert any(Path(tmp_path).glob("zmlx_glu_float16_8_0-*.cubin"))


@pytest.mark.cuda
def test_without_nvrtc_kernels_run_through_the_jit(fresh_state, monkeypatch):
    def missing():
        raise _native.BackendError("NVRTC not found (planted)")

    monkeypatch.setattr(_compile, "locate", missing)
    _compile.use_precompiled(True)
    pre, jit = both_paths(_native.plan_glu)
    x = mx.random.normal((2, 64))
    args = ("silu", [2, 64], "float32", [2, 64], "float32")
    a = pre([x, x], pre.launch(("k",), *args))[0]
    b = jit([x, x], jit.launch(("k",), *args))[0]
    assert pre._launches[("k",)].precompiled is False
    assert mx.array_equal(a, b).item()
    report = _compile.report()
    assert report["path"] == "cuda_kernel" and "planted" in report["reason"]


def test_patch_report_shows_the_kernel_path(fresh_state):
    from zmlx_rs.report import PatchReport

    _compile.use_precompiled(False)
    kernels = PatchReport().kernels
    assert kernels["path"] == "cuda_kernel" and "use_precompiled(False)" in kernels["reason"]


@pytest.mark.cuda
def test_patch_report_summary_names_the_path(fresh_state):
    from zmlx_rs.report import PatchReport

    _compile.use_precompiled(True)
    x = mx.ones((2, 64), dtype=mx.bfloat16)
    mx.eval(K.swiglu(x, x, kernel=True))
    assert "kernels: precompiled" in str(PatchReport()), _compile.report()
