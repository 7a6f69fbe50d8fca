"""Runs the moe_qmv CUDA kernel bodies on the CPU, as written, against the reference.

Without a GPU, NVRTC-compiled kernels cannot run; this compiles the catalog body (specialised
exactly as MLX does: `constexpr`/`using` template lines, then the body) as host C++ under
`emu.h`, which emulates blocks, threads, `__syncthreads` and warp shuffles with std::thread
and std::barrier. Slow (a thread per CUDA thread), so shapes stay small. Needs g++ (C++20)
and the CUDA headers (`pip install nvidia-cuda-runtime nvidia-cuda-cccl`).

    python tools/cuda_emu/emulate.py            # every bits x group size x dtype, both paths
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from zmlx_rs import _native
from zmlx_rs import reference as ref

HERE = Path(__file__).resolve().parent
CTYPES = {"float16": "__half", "float32": "float", "uint32": "uint32_t", "int32": "int32_t"}
NP = {"float16": np.float16, "float32": np.float32}
MX = {"float16": mx.float16, "float32": mx.float32}
BUILD = Path(tempfile.gettempdir()) / "zmlx_cuda_emu"


def cuda_includes() -> list[str]:
    """-I flags for the CUDA runtime headers and libcu++ (`cuda/std/...`)."""
    import nvidia

    for base in nvidia.__path__:
        for p in Path(base).glob("*/include/cuda_fp16.h"):
            return ["-I", str(p.parent), "-I", str(p.parent / "cccl")]
    raise SystemExit("CUDA headers not found: pip install nvidia-cuda-runtime nvidia-cuda-cccl")


def _dtype(a: mx.array) -> str:
    return str(a.dtype).split(".")[-1]


def compile_launch(launch, in_dtypes: list[str], out_dtype: str) -> ctypes.CDLL:
    spec = _native.kernel_spec(launch.kernel)
    params = [f"const {CTYPES[d]}* {n}" for n, d in zip(spec.input_names, in_dtypes, strict=True)]
    params += [f"{CTYPES[out_dtype]}* {n}" for n in spec.output_names]
    names = ", ".join(p.split("* ")[1] for p in params)
    consts = []
    for n, v in launch.template:
        if isinstance(v, bool):
            consts.append(f"constexpr bool {n} = {'true' if v else 'false'};")
        elif isinstance(v, int):
            consts.append(f"constexpr int {n} = {v};")
        else:
            consts.append(f"using {n} = {CTYPES[v]};")
    blocks = -(-launch.grid[0] // launch.threadgroup[0])
    # The body reads `<numel_of>_shape` / `_ndim`: always `indices` for these kernels.
    src = "\n".join(
        [
            '#include "emu.h"',
            spec.header,
            f"static void body({', '.join(params)}, const int* indices_shape, int indices_ndim) {{",
            *consts,
            spec.source,
            "}",
            f'extern "C" void run({", ".join(params)}, const int* shape, int ndim) {{',
            f"  launch(Dim{{{blocks}u, {launch.grid[1]}u, 1u}},",
            f"         Dim{{{launch.threadgroup[0]}u, 1u, 1u}},",
            f"         [=] {{ body({names}, shape, ndim); }});",
            "}",
        ]
    )
    BUILD.mkdir(exist_ok=True)
    tag = hashlib.md5(src.encode()).hexdigest()[:12]
    so = BUILD / f"{launch.kernel}_{tag}.so"
    if not so.exists():
        cpp = so.with_suffix(".cpp")
        cpp.write_text(src)
        cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-w", *cuda_includes()]
        cmd += ["-I", str(HERE), str(cpp), "-o", str(so), "-lpthread"]
        subprocess.run(cmd, check=True)
    return ctypes.CDLL(str(so))


def run(launch, inputs: list[mx.array], out_dtype: str) -> np.ndarray:
    lib = compile_launch(launch, [_dtype(a) for a in inputs], out_dtype)
    arrays = [np.ascontiguousarray(np.array(a)) for a in inputs]
    out = np.full(tuple(launch.output_shapes[0]), np.nan, dtype=NP[out_dtype])  # poisoned
    ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in [*arrays, out]]
    shape = (ctypes.c_int * 10)(*inputs[1].shape)
    lib.run(*ptrs, shape, ctypes.c_int(inputs[1].ndim))
    return out


def case(tokens, d, inter, n_experts, k, bits, gs, dt, seed=0):
    """Max error of both kernels against the fp32 reference, and the reference's scale."""
    mx.random.seed(seed)
    x = mx.random.normal((tokens, d)).astype(MX[dt])
    inds = mx.argsort(mx.random.uniform(shape=(tokens, n_experts)), axis=-1)[:, :k]
    inds = inds.astype(mx.uint32)
    scores = mx.softmax(mx.random.normal((tokens, k)), axis=-1).astype(MX[dt])

    def experts(rows, cols):
        w = mx.random.normal((n_experts, rows, cols)) * cols**-0.5
        q, s, b = mx.quantize(w, group_size=gs, bits=bits)
        return q, s.astype(MX[dt]), b.astype(MX[dt])

    up, down = experts(2 * inter, d), experts(d, inter)
    # MLX's CPU gather_qmm accumulates fp16 in fp16: the reference runs on fp32 copies.
    f32 = [x, scores, *up[1:], *down[1:]]
    xf, sf, *rest = [a.astype(mx.float32) for a in f32]
    upf, downf = (up[0], *rest[:2]), (down[0], *rest[2:])
    q = {"group_size": gs, "bits": bits}
    want_act = ref.gather_qmv_swiglu(xf, inds, *upf, **q).astype(MX[dt])
    want = ref.gather_qmv_combine(want_act.astype(mx.float32), inds, sf, *downf, **q)

    def spec(a):
        return list(a.shape), _dtype(a)

    la = _native.plan_gather_qmv_swiglu(spec(x), spec(inds), *map(spec, up), bits, gs)
    lb = _native.plan_gather_qmv_combine(
        spec(want_act), spec(inds), spec(scores), *map(spec, down), bits, gs
    )
    got_act = run(la, [x, inds, *up], dt)
    got = run(lb, [want_act, inds, scores, *down], dt)
    errors = []
    for g, w in ((got_act, want_act), (got, want)):
        w = np.array(w.astype(mx.float32))
        finite = bool(np.isfinite(g).all())
        errors.append(
            (float(np.abs(g.astype(np.float32) - w).max()), float(np.abs(w).max()), finite)
        )
    return errors


SHAPES = [  # (tokens, D, I, experts, k)
    (1, 2048, 768, 128, 8),
    (3, 384, 128, 8, 1),
    (2, 640, 128, 256, 6),
    (5, 1152, 384, 64, 3),
]


def main() -> int:
    failed = 0
    cases = []
    for i, (bits, gs, dt) in enumerate(
        (b, g, d) for b in (4, 8) for g in (32, 64, 128) for d in ("float16", "float32")
    ):
        t, d, inter, e, k = SHAPES[i % len(SHAPES)]
        cases.append((t, max(d // gs, 1) * gs, max(inter // gs, 1) * gs, e, k, bits, gs, dt))
    # Past the shared-memory staging limits: the L1 paths.
    cases += [(1, 12288, 64, 4, 2, 4, 64, "float32"), (2, 64, 6144, 4, 2, 8, 32, "float16")]
    for n, c in enumerate(cases):
        errs = case(*c, seed=n)
        tol = 4e-3 if c[-1] == "float16" else 1e-4
        ok = all(fin and err <= tol * scale for err, scale, fin in errs)
        failed += not ok
        print("ok  " if ok else "FAIL", c, errs, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
