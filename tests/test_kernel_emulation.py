"""The CUDA kernel bodies, run as written on the CPU: each launch is compiled as host C++
under tests/emulation/emu.h (a std::thread per CUDA thread, std::barrier for
__syncthreads and warp shuffles) with the exact template constants and launch geometry the
Rust planner produced, then compared with the MLX reference. Catches logic errors (indexing,
geometry, warp reductions, masks) on machines without a GPU; the `cuda` tests cover the
real device. Needs g++ (C++20) and the CUDA headers from PyPI (nvidia-cuda-runtime,
nvidia-cuda-cccl, nvidia-cuda-crt)."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from zmlx_rs import _native
from zmlx_rs import reference as ref

HERE = Path(__file__).resolve().parent / "emulation"
BUILD = Path(tempfile.gettempdir()) / "zmlx_rs_emulation"
CTYPES = {"float16": "__half", "float32": "float", "uint32": "uint32_t", "int32": "int32_t"}
NP = {"float16": np.float16, "float32": np.float32, "uint32": np.uint32, "int32": np.int32}


def _cuda_includes() -> list[str] | None:
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        for p in Path(base).glob("*/include/cuda_fp16.h"):
            if (p.parent / "crt" / "host_defines.h").exists():
                return ["-I", str(p.parent), "-I", str(p.parent / "cccl")]
    return None


INCLUDES = _cuda_includes()
pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or INCLUDES is None,
    reason="needs g++ and the CUDA headers (pip install nvidia-cuda-runtime nvidia-cuda-cccl "
    "nvidia-cuda-crt)",
)


def _name(a: mx.array) -> str:
    return str(a.dtype).split(".")[-1]


def build(name: str, src: str) -> ctypes.CDLL:
    """Compiles host C++ under emu.h into a shared library, cached by source."""
    BUILD.mkdir(exist_ok=True)
    so = BUILD / f"{name}_{hashlib.sha256(src.encode()).hexdigest()[:16]}.so"
    if not so.exists():
        cpp = so.with_suffix(f".{id(src)}.cpp")
        cpp.write_text(src)
        tmp = so.with_suffix(f".{id(src)}.tmp")
        cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-w", *INCLUDES, "-I", str(HERE)]
        subprocess.run([*cmd, str(cpp), "-o", str(tmp), "-lpthread"], check=True)
        tmp.replace(so)
    return ctypes.CDLL(str(so))


def run(launch: _native.Launch, inputs: list[mx.array]) -> list[np.ndarray]:
    """Compiles (cached by source) and runs one launch; outputs start poisoned."""
    spec = _native.kernel_spec(launch.kernel)
    outs_dt = launch.output_dtypes
    params = [
        f"const {CTYPES[_name(a)]}* {n}" for n, a in zip(spec.input_names, inputs, strict=True)
    ]
    params += [f"{CTYPES[d]}* {n}" for n, d in zip(spec.output_names, outs_dt, strict=True)]
    names = ", ".join(p.split("* ")[1] for p in params)
    consts = []
    for n, v in launch.template:
        if isinstance(v, bool):
            consts.append(f"constexpr bool {n} = {'true' if v else 'false'};")
        elif isinstance(v, int):
            consts.append(f"constexpr int {n} = {v};")
        else:
            consts.append(f"using {n} = {CTYPES[v]};")
    grid, block = launch.grid, launch.threadgroup
    assert grid[0] % block[0] == 0, "launches cover their work exactly"
    src = "\n".join(
        [
            '#include "emu.h"',
            spec.header,
            f"static void body({', '.join(params)}) {{",
            *consts,
            spec.source,
            "}",
            f'extern "C" void run({", ".join(params)}) {{',
            f"  launch(Dim{{{grid[0] // block[0]}u, {grid[1]}u, 1u}}, Dim{{{block[0]}u, 1u, 1u}},",
            f"         [=] {{ body({names}); }});",
            "}",
        ]
    )
    lib = build(launch.kernel, src)
    arrays = [np.ascontiguousarray(np.array(a)) for a in inputs]
    outs = [
        np.full(tuple(s), np.iinfo(np.uint32).max if d == "uint32" else np.nan, dtype=NP[d])
        for s, d in zip(launch.output_shapes, outs_dt, strict=True)
    ]
    lib.run(*[a.ctypes.data_as(ctypes.c_void_p) for a in [*arrays, *outs]])
    return outs


def close(got: np.ndarray, want: mx.array, dtype: mx.Dtype) -> None:
    tol = 2e-2 if dtype == mx.float16 else 1e-5
    assert np.isfinite(got).all(), "an output was left unwritten"
    np.testing.assert_allclose(got.astype(np.float64), np.array(want), rtol=tol, atol=tol)


SHAPES = [
    ((3, 1001), mx.float16),
    ((4, 768), mx.float16),
    ((2, 5, 13), mx.float32),
    ((7,), mx.float32),
]


@pytest.mark.parametrize(("shape", "dtype"), SHAPES, ids=str)
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_approx"])
def test_glu_forward_and_backward(shape, dtype, act):
    g, u, c = (mx.random.normal(shape).astype(dtype) for _ in range(3))

    def f(a, b):
        a, b = a.astype(mx.float32), b.astype(mx.float32)
        return ref.swiglu(a, b) if act == "silu" else ref.geglu(a, b, act == "gelu_approx")

    (out,) = run(_native.plan_glu(act, list(shape), _name(g), list(shape), _name(u)), [g, u])
    close(out, f(g, u), dtype)
    launch = _native.plan_glu_backward(act, list(shape), _name(g), list(shape), _name(c))
    d_gate, d_up = run(launch, [g, u, c])
    _, (want_g, want_u) = mx.vjp(f, [g, u], [c.astype(mx.float32)])
    close(d_gate, want_g, dtype)
    close(d_up, want_u, dtype)


@pytest.mark.parametrize(("shape", "dtype"), SHAPES, ids=str)
def test_glu_with_mlx_rounding(shape, dtype):
    g, u = (mx.random.normal(shape).astype(dtype) for _ in range(2))
    (out,) = run(_native.plan_glu("silu_mlx", list(shape), _name(g), list(shape), _name(u)), [g, u])
    close(out, ref.swiglu(g, u, "mlx").astype(mx.float32), dtype)


@pytest.mark.parametrize(
    ("shape", "dtype"), [((3, 2002), mx.float16), ((2, 1536), mx.float16), ((4, 22), mx.float32)]
)
def test_glu_packed_forward_and_backward(shape, dtype):
    h = mx.random.normal(shape).astype(dtype)
    c = mx.random.normal((*shape[:-1], shape[-1] // 2)).astype(dtype)
    (out,) = run(_native.plan_glu_packed("silu", list(shape), _name(h)), [h])
    close(out, ref.swiglu_packed(h.astype(mx.float32)), dtype)
    launch = _native.plan_glu_packed_backward(
        "silu", list(shape), _name(h), list(c.shape), _name(c)
    )
    (d_h,) = run(launch, [h, c])
    _, (want,) = mx.vjp(ref.swiglu_packed, [h.astype(mx.float32)], [c.astype(mx.float32)])
    close(d_h, want, dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "score_dtype"),
    [((3, 2, 1001), mx.float32, mx.float32), ((1, 8, 2048), mx.float16, mx.float32)],
)
def test_gather_add(shape, dtype, score_dtype):
    y = mx.random.normal(shape).astype(dtype)
    s = mx.random.uniform(shape=shape[:-1]).astype(score_dtype)
    launch = _native.plan_gather_add(list(shape), _name(y), list(s.shape), _name(s))
    (out,) = run(launch, [y, s])
    close(out, ref.gather_add(y.astype(mx.float32), s.astype(mx.float32)), dtype)


@pytest.mark.parametrize(
    ("rows", "experts", "k", "mode"),
    [
        (5, 60, 4, "softmax"),
        (6, 128, 8, "softmax"),
        (3, 8, 2, "topk_softmax"),
        (7, 40, 3, "sigmoid"),
        (2, 512, 16, "softmax"),
    ],
)
def test_moe_gating(rows, experts, k, mode):
    logits = 3 * mx.random.normal((rows, experts))
    bias = 0.1 * mx.random.normal((experts,)) if mode == "sigmoid" else None
    scale = 2.5 if mode == "sigmoid" else 1.0
    launch = _native.plan_moe_gating(
        [rows, experts],
        "float32",
        k,
        mode,
        True,
        None if bias is None else [experts],
        None if bias is None else "float32",
        scale,
        "lower",
    )
    scores, indices = run(launch, [logits] if bias is None else [logits, bias])
    want_s, want_i = ref.moe_gating(logits, k, mode=mode, bias=bias, scale=scale)
    np.testing.assert_array_equal(indices, np.array(want_i))
    close(scores, want_s, mx.float32)


@pytest.mark.parametrize("mode", ["softmax", "topk_softmax"])
def test_moe_gating_ties_follow_the_rule(mode):
    """Logits drawn from four values over 40 experts tie everywhere: the picks must be
    the top-k of (score, index) with the index ascending ("higher") or descending ("lower")
    among equal scores, in descending order."""
    rows, experts, k = 5, 40, 6
    logits = mx.random.randint(0, 4, (rows, experts)).astype(mx.float32)
    for ties in ("lower", "higher"):
        launch = _native.plan_moe_gating(
            [rows, experts], "float32", k, mode, True, None, None, 1.0, ties
        )
        _, indices = run(launch, [logits])
        sign = 1 if ties == "higher" else -1
        for row, got in zip(np.array(logits), indices, strict=True):
            order = sorted(range(experts), key=lambda e: (row[e], sign * e), reverse=True)
            assert list(got) == order[:k], (ties, row, got)


def philox4x32_10(counter: int, k0: int, k1: int) -> tuple[int, ...]:
    """Philox4x32-10 (Salmon et al., SC'11) in Python, counter words 2 and 3 zero."""
    m = 0xFFFFFFFF
    c = [counter & m, counter >> 32, 0, 0]
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & m, (p0 >> 32) ^ c[3] ^ k1, p0 & m]
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return tuple(c)


def test_philox_is_random123s_philox4x32_10():
    # Random123's known answer for a zero counter and key (its kat_vectors file).
    assert philox4x32_10(0, 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    lib = build(
        "philox",
        "\n".join(
            [
                '#include "emu.h"',
                _native.kernel_spec("zmlx_dropout").header,
                'extern "C" void philox(uint32_t* out, unsigned long long c, uint32_t k0,',
                "                       uint32_t k1) {",
                "  const uint4 r = zm::philox(c, k0, k1);",
                "  out[0] = r.x; out[1] = r.y; out[2] = r.z; out[3] = r.w;",
                "}",
            ]
        ),
    )
    rng = np.random.default_rng()
    cases = [
        (0, 0, 0),
        *((int(rng.integers(2**63)), *map(int, rng.integers(2**32, size=2))) for _ in range(64)),
    ]
    for counter, k0, k1 in cases:
        out = np.zeros(4, np.uint32)
        lib.philox(
            out.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_ulonglong(counter),
            ctypes.c_uint32(k0),
            ctypes.c_uint32(k1),
        )
        assert tuple(int(v) for v in out) == philox4x32_10(counter, k0, k1), (counter, k0, k1)


def test_dropout_mask_is_a_function_of_key_and_position():
    x, key = mx.random.normal((4096,)), mx.random.key(3)
    (full,) = run(_native.plan_dropout([4096], "float32", 0.5, [2], "uint32"), [x, key])
    (part,) = run(_native.plan_dropout([4093], "float32", 0.5, [2], "uint32"), [x[:4093], key])
    np.testing.assert_array_equal(full[:4093] != 0, part != 0)
    kept = full != 0
    assert abs(kept.mean() - 0.5) < 6 * np.sqrt(0.25 / 4096)
    np.testing.assert_allclose(full[kept], 2 * np.array(x)[kept], rtol=1e-6)


# (tokens, D, I, experts, k, bits, group_size, dtype): k = 1 to 8, 4- and 8-bit, groups
# 32/64/128, several tokens, reductions that leave threads idle in their last step
# (swiglu 260 chunks, combine 288), blocks of 1 to 8 rows, and the tensor-core kernels
# (8 or more pairs, half dtypes, out features multiples of 128; 16 rows a warp). The
# reference runs in fp32: MLX's CPU gather_qmm accumulates half precision in half precision.
QMV_CASES = [
    (1, 256, 128, 8, 2, 4, 64, mx.float32),
    (3, 384, 128, 16, 3, 8, 32, mx.float32),
    (2, 320, 96, 4, 1, 4, 32, mx.float32),
    (1, 256, 128, 8, 8, 8, 128, mx.float16),
    (2, 4160, 64, 4, 2, 8, 32, mx.float32),
    (1, 256, 1152, 6, 4, 8, 64, mx.float32),
    (2, 640, 256, 16, 6, 4, 128, mx.float16),
    (1, 256, 384, 10, 8, 4, 64, mx.float16),
    # The tiny qwen3_moe of the decode-graph cuda test: a 6-token prompt, 12 pairs.
    (6, 256, 64, 8, 2, 4, 64, mx.float16),
    # Tensor-core rings: 24 groups in 16 parts of 1 or 2 (gate|up), and Qwen3-30B-A3B's
    # combine rows (6 parts, 2 in flight: the staging limits it), slots reused; the combine's
    # activations ride in its ring: GLM-4.5-Air's rows at 8 bits (22 parts, 2 in flight) and
    # at group 32 (11 parts of 4 groups, 1 in flight).
    (1, 1536, 128, 8, 8, 4, 64, mx.float16),
    (1, 256, 768, 8, 8, 4, 64, mx.float16),
    (1, 128, 1408, 8, 8, 8, 64, mx.float16),
    (1, 128, 1408, 8, 8, 4, 32, mx.float16),
]


@pytest.mark.parametrize(
    ("tokens", "d", "inter", "experts", "k", "bits", "group_size", "dtype"), QMV_CASES, ids=str
)
def test_quantized_moe_decode(tokens, d, inter, experts, k, bits, group_size, dtype):
    x = mx.random.normal((tokens, d)).astype(dtype)
    indices = mx.argsort(mx.random.uniform(shape=(tokens, experts)), axis=-1)[:, :k]
    # The kernels clamp an out-of-range expert (token 0's last pick) to the last one.
    last = (mx.arange(tokens)[:, None] == 0) & (mx.arange(k) == k - 1)
    wild = mx.where(last, experts + 7, indices).astype(mx.uint32)
    indices = mx.where(last, experts - 1, indices).astype(mx.uint32)
    scores = mx.softmax(mx.random.normal((tokens, k)), axis=-1).astype(dtype)

    def quantized(rows, cols):
        w = mx.random.normal((experts, rows, cols)) * cols**-0.5
        packed, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
        return packed, scales.astype(dtype), biases.astype(dtype)

    gate_up, down = quantized(2 * inter, d), quantized(d, inter)
    q = {"group_size": group_size, "bits": bits}

    def spec(a):
        return list(a.shape), _name(a)

    def f32(arrays):
        return [a if a.dtype == mx.uint32 else a.astype(mx.float32) for a in arrays]

    launch = _native.plan_gather_qmv_swiglu(
        spec(x), spec(wild), *map(spec, gate_up), bits, group_size
    )
    (act,) = run(launch, [x, wild, *gate_up])
    want_act = ref.gather_qmv_swiglu(*f32([x, indices, *gate_up]), **q)
    close(act, want_act, dtype)
    act = want_act.astype(dtype)
    launch = _native.plan_gather_qmv_combine(
        spec(act), spec(wild), spec(scores), *map(spec, down), bits, group_size
    )
    (out,) = run(launch, [act, wild, scores, *down])
    close(out, ref.gather_qmv_combine(*f32([act, indices, scores, *down]), **q), dtype)


def _mlx_qmv_fp16(x: np.ndarray, q: np.ndarray, s: np.ndarray, b: np.ndarray, gs: int):
    """MLX-CUDA's one-row 4-bit qmv, operation by operation (fp16): lane t of a row's warp
    takes values t * 16 + r * 512 + i; slot i accumulates fma(x, fma(q, scale, bias), acc),
    each fma rounded once to fp16; a lane's 16 slots add in order in fp32, then the warp's
    lanes by an xor butterfly."""
    n, k = q.shape
    rest = k % 512
    starts = [[t * 16 + r * 512 for r in range(k // 512)] for t in range(32)]
    for t in range(32):
        if t * 16 < rest:
            starts[t].append(k - rest + t * 16)
    lanes = np.zeros((n, 32), dtype=np.float32)
    xf = x.astype(np.float64)
    for t in range(32):
        acc = np.zeros((n, 16), dtype=np.float16)
        for idx in starts[t]:
            cols = np.arange(idx, idx + 16)
            g = idx // gs
            w = (q[:, cols] * s[:, g : g + 1].astype(np.float64) + b[:, g : g + 1]).astype(
                np.float16
            )
            acc = (xf[cols] * w.astype(np.float64) + acc.astype(np.float64)).astype(np.float16)
        total = np.zeros(n, dtype=np.float32)
        for i in range(16):
            total = (total + acc[:, i].astype(np.float32)).astype(np.float32)
        lanes[:, t] = total
    for o in (16, 8, 4, 2, 1):
        lanes = (lanes + lanes[:, np.arange(32) ^ o]).astype(np.float32)
    return lanes[:, 0].astype(np.float16)


@pytest.mark.parametrize(("n", "k", "group_size"), [(20, 1024, 64), (9, 544, 32), (5, 32, 32)])
def test_dense_qmv_is_mlx_arithmetic_bit_for_bit(n, k, group_size):
    x = mx.random.normal((1, k)).astype(mx.float16)
    w = mx.random.normal((n, k)) * k**-0.5
    packed, scales, biases = mx.quantize(w, group_size=group_size, bits=4)
    scales, biases = scales.astype(mx.float16), biases.astype(mx.float16)
    launch = _native.plan_qmv(
        *[(list(a.shape), _name(a)) for a in (x, packed, scales, biases)], 4, group_size
    )
    (out,) = run(launch, [x, packed, scales, biases])
    shifts = np.arange(8, dtype=np.uint32) * 4
    q = ((np.array(packed)[:, :, None] >> shifts) & 15).reshape(n, k)
    want = _mlx_qmv_fp16(np.array(x)[0], q, np.array(scales), np.array(biases), group_size)
    np.testing.assert_array_equal(out[0], want)
    close(
        out,
        ref.qmv(
            *[
                a.astype(mx.float32) if a.dtype != mx.uint32 else a
                for a in (x, packed, scales, biases)
            ],
            group_size=group_size,
            bits=4,
        ),
        mx.float16,
    )


def _mlx_add_rms_norm(x, r, w, eps, block, chunks, vec, dtype):
    """MLX-CUDA's add then rms_norm_small, operation by operation (fp32 inputs here are the
    kernel's T; half types round h and the products through T)."""
    rows, d = x.shape
    h = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype)
    hf = h.astype(np.float32)
    sq = np.zeros((rows, block), dtype=np.float32)
    for c in range(chunks):
        for v in range(vec):
            i = (block * c + np.arange(block)) * vec + v
            vals = np.where(i < d, hf[:, np.minimum(i, d - 1)], np.float32(0))
            # fma(v, v, acc): the exact square plus acc, rounded once (float64 is exact here).
            sq = (vals.astype(np.float64) ** 2 + sq).astype(np.float32)
    warps = sq.reshape(rows, block // 32, 32)
    for o in (16, 8, 4, 2, 1):
        warps = (warps + warps[:, :, np.arange(32) ^ o]).astype(np.float32)
    total = warps[:, :, 0]
    lanes = np.zeros((rows, 32), dtype=np.float32)
    lanes[:, : block // 32] = total
    if block > 32:
        for o in (16, 8, 4, 2, 1):
            lanes = (lanes + lanes[:, np.arange(32) ^ o]).astype(np.float32)
    else:
        lanes[:, 0] = total[:, 0]
    scale = np.float32(1) / np.sqrt(lanes[:, :1] / np.float32(d) + np.float32(eps))
    y = (hf * scale).astype(np.float32).astype(dtype)
    return h, (w.astype(np.float32) * y.astype(np.float32)).astype(dtype)


@pytest.mark.parametrize(
    ("rows", "d", "dtype"),
    [
        (2, 1024, mx.float16),
        (1, 1000, mx.float16),
        (6, 256, mx.float16),
        (3, 96, mx.float32),
        (1, 1536, mx.float32),
    ],
    ids=str,
)
def test_add_rms_norm_is_mlx_arithmetic(rows, d, dtype):
    x, r = (mx.random.normal((rows, d)).astype(dtype) for _ in range(2))
    w = mx.random.uniform(0.5, 1.5, (d,)).astype(dtype)
    spec = [(list(a.shape), _name(a)) for a in (x, r, w)]
    launch = _native.plan_add_rms_norm(*spec, 1e-5)
    h, out = run(launch, [x, r, w])
    t = dict(launch.template)
    np_dtype = NP[_name(x)]
    want_h, want = _mlx_add_rms_norm(
        np.array(x), np.array(r), np.array(w), 1e-5, t["BLOCK"], t["CHUNKS"], t["VEC"], np_dtype
    )
    np.testing.assert_array_equal(h, want_h)
    # The kernel's rsqrtf is the GPU's approximation; the host stands in 1 / sqrt: within an
    # ulp of T after the scaling.
    np.testing.assert_allclose(
        out.astype(np.float64),
        want.astype(np.float64),
        rtol=2e-3 if dtype == mx.float16 else 1e-6,
        atol=1e-6,
    )
    ref_h, ref_out = ref.add_rms_norm(x, r, w, 1e-5)
    np.testing.assert_array_equal(h, np.array(ref_h))
    close(out, ref_out, dtype)


def _mlx_head_rms_norm(x: np.ndarray, w: np.ndarray, eps: float, vec: int, dtype) -> np.ndarray:
    """MLX-CUDA's RMSNorm of rows of at most 32 vectors: rms_norm_small with 64 threads and
    one vector each, i.e. the add-then-norm model with nothing added."""
    return _mlx_add_rms_norm(x, np.zeros_like(x), w, eps, 64, 1, vec, dtype)[1]


@pytest.mark.parametrize(
    ("rows", "hq", "hk", "d", "dv", "dtype"),
    [
        (2, 4, 2, 128, 128, mx.float16),
        (3, 3, 1, 64, 32, mx.float32),
        (1, 2, 2, 40, 24, mx.float16),
        (6, 4, 2, 16, 16, mx.float16),
    ],
    ids=str,
)
def test_qk_rms_norm_is_mlx_arithmetic(rows, hq, hk, d, dv, dtype):
    qkv = mx.random.normal((rows, (hq + hk) * d + hk * dv)).astype(dtype)
    qw, kw = (mx.random.uniform(0.5, 1.5, (d,)).astype(dtype) for _ in range(2))
    spec = [(list(a.shape), _name(a)) for a in (qkv, qw, kw)]
    launch = _native.plan_qk_rms_norm(*spec, (1e-6, 1e-5), hq, hk)
    q, k, v = run(launch, [qkv, qw, kw])
    vec = dict(launch.template)["VEC"]
    a = np.array(qkv)
    np_dtype = NP[_name(qkv)]
    want_q = _mlx_head_rms_norm(a[:, : hq * d].reshape(-1, d), np.array(qw), 1e-6, vec, np_dtype)
    want_k = _mlx_head_rms_norm(
        a[:, hq * d : (hq + hk) * d].reshape(-1, d), np.array(kw), 1e-5, vec, np_dtype
    )
    tol = {"rtol": 2e-3, "atol": 1e-6} if dtype == mx.float16 else {"rtol": 1e-6, "atol": 1e-7}
    np.testing.assert_allclose(q.reshape(-1, d).astype(np.float64), want_q, **tol)
    np.testing.assert_allclose(k.reshape(-1, d).astype(np.float64), want_k, **tol)
    np.testing.assert_array_equal(v, a[:, (hq + hk) * d :].reshape(rows, hk, dv))
    rq, rk, rv = ref.qk_rms_norm(qkv, qw, kw, (1e-6, 1e-5), hq, hk)
    close(q, rq, dtype)
    close(k, rk, dtype)
    np.testing.assert_array_equal(v, np.array(rv))


@pytest.mark.parametrize(
    ("rows", "hq", "hk", "d", "dv", "traditional", "dtype"),
    [
        (2, 4, 2, 128, 128, False, mx.float16),
        (3, 3, 1, 64, 32, True, mx.float32),
        (3, 4, 2, 16, 16, False, mx.float16),
    ],
    ids=str,
)
def test_qkv_rope_is_mlx_rope(rows, hq, hk, d, dv, traditional, dtype):
    qkv = mx.random.normal((rows, 1, (hq + hk) * d + hk * dv)).astype(dtype)
    offset = mx.array([0, 17, 3000][:rows], dtype=mx.int32)
    kw = {"n_heads": hq, "n_kv_heads": hk, "head_dim": d, "base": 1e6, "scale": 0.5}
    kw["traditional"] = traditional
    spec = [(list(a.shape), _name(a)) for a in (qkv, offset)]
    launch = _native.plan_qkv_rope(*spec, hq, hk, d, 1e6, 0.5, traditional)
    got = run(launch, [qkv, offset])
    # An fp32 angle at position 3000 carries ~2e-4 of rounding, which the host's and MLX's
    # CPU cos/sin turn into different last bits: a looser tolerance than close()'s.
    tol = 2e-2 if dtype == mx.float16 else 1e-3
    for g, w in zip(got, ref.qkv_rope(qkv, offset, **kw), strict=True):
        assert g.shape == w.shape and np.isfinite(g).all()
        np.testing.assert_allclose(g.astype(np.float64), np.array(w), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("rows", "hq", "hk", "d", "dv", "traditional", "dtype"),
    [
        (2, 4, 2, 128, 128, False, mx.float16),
        (3, 3, 1, 64, 32, True, mx.float32),
        (3, 4, 2, 16, 16, False, mx.float16),
    ],
    ids=str,
)
def test_qk_norm_rope_is_mlx_norms_then_rope(rows, hq, hk, d, dv, traditional, dtype):
    qkv = mx.random.normal((rows, 1, (hq + hk) * d + hk * dv)).astype(dtype)
    qw, kw = (mx.random.uniform(0.5, 1.5, (d,)).astype(dtype) for _ in range(2))
    offset = mx.array([0, 17, 3000][:rows], dtype=mx.int32)
    spec = [(list(a.shape), _name(a)) for a in (qkv, qw, kw, offset)]
    launch = _native.plan_qk_norm_rope(*spec, (1e-6, 1e-5), hq, hk, d, 1e6, 0.5, traditional)
    got = run(launch, [qkv, qw, kw, offset])
    rope = {"n_heads": hq, "n_kv_heads": hk, "base": 1e6, "scale": 0.5}
    want = ref.qk_norm_rope(qkv, qw, kw, (1e-6, 1e-5), offset, **rope, traditional=traditional)
    # As test_qkv_rope_is_mlx_rope: fp32 angles at position 3000 differ in their last bits.
    tol = 2e-2 if dtype == mx.float16 else 1e-3
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.isfinite(g).all()
        np.testing.assert_allclose(g.astype(np.float64), np.array(w), rtol=tol, atol=tol)
