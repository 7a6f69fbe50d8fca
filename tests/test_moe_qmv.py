"""Quantised MoE decode kernels: parity with the unfused mx.gather_qmm path (CUDA) and the
reference/fallback and pattern on any backend."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tiny
import zmlx_rs
from helpers import poison
from zmlx_rs import _backend, _native, kernels
from zmlx_rs import reference as ref
from zmlx_rs.patterns import Fused, moe_decode


def _experts(n_experts, rows, cols, bits, group_size, dtype, key):
    w = mx.random.normal((n_experts, rows, cols), key=key) * (1.0 / math.sqrt(cols))
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    return q, s.astype(dtype), b.astype(dtype)


def _case(tokens, d, inter, n_experts, k, bits, group_size, dtype, seed=0):
    keys = mx.random.split(mx.random.key(seed), 5)
    x = mx.random.normal((tokens, d), key=keys[0]).astype(dtype)
    order = mx.argsort(mx.random.uniform(shape=(tokens, n_experts), key=keys[1]), axis=-1)
    inds = order[:, :k].astype(mx.uint32)
    scores = mx.softmax(mx.random.normal((tokens, k), key=keys[2]), axis=-1).astype(dtype)
    up = _experts(n_experts, 2 * inter, d, bits, group_size, dtype, keys[3])
    down = _experts(n_experts, d, inter, bits, group_size, dtype, keys[4])
    return x, inds, scores, up, down


def _close(got: mx.array, want: mx.array, dtype) -> None:
    g = np.array(got.astype(mx.float32))
    w = np.array(want.astype(mx.float32))
    assert g.shape == w.shape
    assert np.isfinite(g).all(), "unwritten (poisoned) or non-finite outputs"
    # One rounding of the output (and of gate/up before SwiGLU) in the dtype, relative to
    # the output's scale: gather_qmm and the kernel sum in different orders.
    tol = {mx.float32: 1e-4, mx.float16: 4e-3, mx.bfloat16: 3e-2}[dtype]
    scale = max(float(np.abs(w).max()), 1e-6)
    err = float(np.abs(g - w).max())
    assert err <= tol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


def test_reference_is_the_unfused_mlx_lm_path():
    x, inds, scores, up, down = _case(3, 64, 32, 8, 2, 4, 32, mx.float32)
    act = ref.gather_qmv_swiglu(x, inds, *up, group_size=32, bits=4)
    assert act.shape == (3, 2, 32)
    i = 32
    w = mx.dequantize(*up, group_size=32, bits=4)
    h = mx.einsum("td,tkod->tko", x, w[inds])
    want = nn.silu(h[..., :i]) * h[..., i:]
    assert mx.allclose(act, want, rtol=1e-4, atol=1e-4)
    out = ref.gather_qmv_combine(act, inds, scores, *down, group_size=32, bits=4)
    wd = mx.dequantize(*down, group_size=32, bits=4)
    y = mx.einsum("tki,tkoi->tko", act, wd[inds])
    assert mx.allclose(out, (y * scores[..., None]).sum(-2), rtol=1e-4, atol=1e-4)


def test_fallback_matches_reference():
    """Without CUDA the ops are the reference itself; on CUDA the kernels run (and sum in
    another order than gather_qmm), so there they are held to the kernel tolerance."""
    x, inds, scores, up, down = _case(2, 128, 64, 16, 4, 8, 64, mx.float32)
    act = kernels.gather_qmv_swiglu(x, inds, *up, group_size=64, bits=8)
    _same(act, ref.gather_qmv_swiglu(x, inds, *up, group_size=64, bits=8))
    out = kernels.gather_qmv_combine(act, inds, scores, *down, group_size=64, bits=8)
    want = ref.gather_qmv_combine(act, inds, scores, *down, group_size=64, bits=8)
    _same(out, want)


def _same(got: mx.array, want: mx.array) -> None:
    if _backend.on_cuda():
        _close(got, want, mx.float32)
    else:
        assert mx.array_equal(got, want)


def test_bad_arguments_raise_typed_errors():
    x, inds, scores, up, down = _case(2, 128, 64, 8, 2, 4, 64, mx.float32)
    with pytest.raises(_native.ShapeError, match="'w'"):
        kernels.gather_qmv_swiglu(x[:, :64], inds, *up, group_size=64, bits=4)
    with pytest.raises(_native.ZmlxError, match="'bits'"):
        kernels.gather_qmv_swiglu(x, inds, *up, group_size=64, bits=3)
    with pytest.raises(_native.ZmlxError, match="'group_size'"):
        kernels.gather_qmv_swiglu(x, inds, *up, group_size=64.0, bits=4)
    with pytest.raises(_native.DTypeError, match="'indices'"):
        kernels.gather_qmv_swiglu(x, inds.astype(mx.float32), *up, group_size=64, bits=4)
    act = mx.zeros((2, 2, 64))
    with pytest.raises(_native.ShapeError, match="'scores'"):
        kernels.gather_qmv_combine(act, inds, scores[:, :1], *down, group_size=64, bits=4)
    with pytest.raises(_native.ZmlxError, match="'act'"):
        kernels.gather_qmv_combine(None, inds, scores, *down, group_size=64, bits=4)


_PATTERNS = ["moe_decode", "moe_experts"]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "glm4_moe"])
def test_pattern_matches_unpatched_model(family):
    model = tiny.build(family, bits=4, group_size=32)
    tokens = mx.array([[1, 5, 9, 2, 33, 70, 4, 8]])
    want = model(tokens)
    report = zmlx_rs.patch(model, patterns=_PATTERNS)
    blocks = [m for _, m in model.named_modules() if isinstance(m, moe_decode.FusedMoEDecodeBlock)]
    assert blocks and {p.pattern for p in report.patched} == set(_PATTERNS)
    assert mx.allclose(model(tokens), want, rtol=1e-4, atol=1e-4)
    # Decode (one token) and the sorted prefill path (>= 64 pairs) both run.
    assert model(tokens[:, :1]).shape == (1, 1, 96)
    assert model(mx.arange(40)[None] % 96).shape == (1, 40, 96)
    zmlx_rs.unpatch(model)
    assert not any(isinstance(m, Fused) for _, m in model.named_modules())


def test_pattern_routes_decode_to_the_kernels(monkeypatch):
    """The decode branch's wiring, on any backend: kernels stood in for by the reference."""
    calls = []

    def stand_in(name):
        def call(*args, **kwargs):
            calls.append(name)
            return getattr(ref, name)(*args, **kwargs)

        return call

    model = tiny.build("qwen3_moe", bits=4, group_size=32)
    tokens = mx.array([[1, 5, 9, 2]])
    want = model(tokens[:, :1])
    zmlx_rs.patch(model, patterns=_PATTERNS)
    monkeypatch.setattr(moe_decode, "_backend", SimpleNamespace(on_cuda=lambda: True))
    for name in ("gather_qmv_swiglu", "gather_qmv_combine"):
        monkeypatch.setattr(moe_decode.kernels, name, stand_in(name))
    assert mx.allclose(model(tokens[:, :1]), want, rtol=1e-4, atol=1e-4)
    blocks = [m for _, m in model.named_modules() if isinstance(m, moe_decode.FusedMoEDecodeBlock)]
    assert blocks and calls == ["gather_qmv_swiglu", "gather_qmv_combine"] * len(blocks)
    calls.clear()
    model(mx.arange(40)[None] % 96)  # 80 (token, k) pairs: the gather_qmm path
    assert calls == []


# ---------------------------------------------------------------------------------------
# CUDA: the kernels against mx.gather_qmm, outputs poisoned with NaN first.


_COMBOS = [
    (bits, gs, dt) for bits in (4, 8) for gs in (32, 64, 128) for dt in (mx.float16, mx.bfloat16)
]
# (tokens, D, I, experts, k): odd sizes (tails of the chunk loop and of the row tiles),
# experts 8..256, k 1..8, x staged in shared memory or read through L1.
_SHAPES = [
    (1, 2048, 768, 128, 8),
    (3, 384, 96, 8, 1),
    (2, 640, 160, 256, 6),
    (5, 1152, 416, 64, 3),
    (1, 4096, 1408, 16, 8),
    (8, 256, 2304, 32, 8),
]


@pytest.mark.cuda
@pytest.mark.parametrize("combo", range(len(_COMBOS)))
def test_kernels_match_gather_qmm(combo):
    bits, gs, dtype = _COMBOS[combo]
    for s, (tokens, d, inter, n_experts, k) in enumerate(_SHAPES[combo % 3 :: 3]):
        d, inter = max(d // gs, 1) * gs, max(inter // gs, 1) * gs
        x, inds, scores, up, down = _case(tokens, d, inter, n_experts, k, bits, gs, dtype, s)
        want_act = ref.gather_qmv_swiglu(x, inds, *up, group_size=gs, bits=bits)
        poison((want_act.shape, dtype))
        act = kernels.gather_qmv_swiglu(x, inds, *up, group_size=gs, bits=bits)
        _close(act, want_act, dtype)
        want = ref.gather_qmv_combine(want_act, inds, scores, *down, group_size=gs, bits=bits)
        poison((want.shape, dtype))
        out = kernels.gather_qmv_combine(want_act, inds, scores, *down, group_size=gs, bits=bits)
        _close(out, want, dtype)


# (tokens, D, I, experts, k) where MLX's gather_qmm runs qmm_sm80: at least 8 (token, expert)
# pairs, out features multiples of 128. (1, 1536, ...): at group size 64, 24 groups a row
# staged in 16 parts of 1 or 2. (1, 4096, 1408, ...): GLM-4.5-Air's combine, whose staging
# fits only in small parts.
_MMA_SHAPES = [
    (1, 2048, 768, 128, 8),
    (3, 640, 256, 16, 6),
    (2, 1024, 384, 32, 4),
    (1, 1536, 256, 16, 8),
    (1, 4096, 1408, 16, 8),
]


def _tensor_cores(launch) -> bool:
    """Whether the planned launch is a tensor-core (_mma) kernel: those are given a ring."""
    return "PARTS" in dict(launch.template)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize(("tokens", "d", "inter", "n_experts", "k"), _MMA_SHAPES)
def test_tensor_core_kernels_run_at_every_shape_of_the_bitwise_test(
    tokens, d, inter, n_experts, k, group_size, bits
):
    # The planner alone (no GPU): the staging of both kernels fits 48 KiB at every case the
    # bitwise test below holds to mlx-lm bit for bit.
    dtype = mx.bfloat16
    x, inds, scores, up, down = _case(tokens, d, inter, n_experts, k, bits, group_size, dtype)
    act = mx.zeros((tokens, k, inter), dtype)
    assert _tensor_cores(kernels._qmv_swiglu_launch(x, inds, *up, group_size, bits))
    assert _tensor_cores(kernels._qmv_combine_launch(act, inds, scores, *down, group_size, bits))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("tokens", "d", "inter", "n_experts", "k"), _MMA_SHAPES)
def test_kernels_are_mlx_lm_bitwise_where_mlx_uses_tensor_cores(
    tokens, d, inter, n_experts, k, bits, group_size, dtype
):
    # MLX's gather_qmm runs qmm_sm80 and the _mma kernels repeat its steps. Against mlx-lm's
    # own unfused path (separate gate and up projections, nn.silu(g) * u, down,
    # (y * scores).sum(-2)).
    x, inds, scores, _, down = _case(tokens, d, inter, n_experts, k, bits, group_size, dtype)
    q = {"transpose": True, "group_size": group_size, "bits": bits}
    keys = mx.random.split(mx.random.key(1), 2)
    gate, upp = (_experts(n_experts, inter, d, bits, group_size, dtype, kk) for kk in keys)
    up = [mx.concatenate([a, b], axis=1) for a, b in zip(gate, upp, strict=True)]
    xe = mx.expand_dims(x, (-2, -3))
    g = mx.gather_qmm(xe, *gate, rhs_indices=inds, **q)
    u = mx.gather_qmm(xe, *upp, rhs_indices=inds, **q)
    want_act = (nn.silu(g) * u).squeeze(-2)
    y = mx.gather_qmm(mx.expand_dims(want_act, -2), *down, rhs_indices=inds, **q).squeeze(-2)
    want = (y * scores[..., None]).sum(axis=-2)
    poison((want_act.shape, dtype))
    act = kernels.gather_qmv_swiglu(x, inds, *up, group_size=group_size, bits=bits)
    assert bool(mx.array_equal(act, want_act))
    poison((want.shape, dtype))
    out = kernels.gather_qmv_combine(
        want_act, inds, scores, *down, group_size=group_size, bits=bits
    )
    assert bool(mx.array_equal(out, want))


@pytest.mark.cuda
def test_kernels_take_int32_indices_and_fp32_scores():
    x, inds, scores, up, down = _case(2, 512, 128, 8, 2, 4, 64, mx.bfloat16)
    i32 = inds.astype(mx.int32)
    act = kernels.gather_qmv_swiglu(x, i32, *up, group_size=64, bits=4)
    _close(act, ref.gather_qmv_swiglu(x, inds, *up, group_size=64, bits=4), mx.bfloat16)
    s32 = scores.astype(mx.float32)
    out = kernels.gather_qmv_combine(act, i32, s32, *down, group_size=64, bits=4)
    want = ref.gather_qmv_combine(act, inds, s32, *down, group_size=64, bits=4)
    _close(out, want, mx.bfloat16)


@pytest.mark.cuda
def test_out_of_range_experts_are_clamped():
    x, inds, scores, up, down = _case(2, 512, 128, 8, 2, 4, 64, mx.bfloat16)
    last = (mx.arange(2)[:, None] == 0) & (mx.arange(2) == 1)
    clamped = mx.where(last, 7, inds).astype(mx.uint32)
    wild = mx.where(last, 1000, inds).astype(mx.uint32)
    act = kernels.gather_qmv_swiglu(x, wild, *up, group_size=64, bits=4)
    _close(act, ref.gather_qmv_swiglu(x, clamped, *up, group_size=64, bits=4), mx.bfloat16)
    out = kernels.gather_qmv_combine(act, wild, scores, *down, group_size=64, bits=4)
    want = ref.gather_qmv_combine(act, clamped, scores, *down, group_size=64, bits=4)
    _close(out, want, mx.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "glm4_moe"])
def test_pattern_decode_uses_the_kernels(family, monkeypatch):
    # bf16, as served (MLX-CUDA does not JIT fp32 quantized matmuls on the pip CUDA headers).
    model = tiny.build(family, bits=4, group_size=64)
    model.set_dtype(mx.bfloat16)
    tokens = mx.array([[1, 5, 9, 2]])
    want = model(tokens[:, :1]).astype(mx.float32)
    zmlx_rs.patch(model, patterns=_PATTERNS)
    calls = []
    for name in ("gather_qmv_swiglu", "gather_qmv_combine"):
        real = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    got = model(tokens[:, :1]).astype(mx.float32)
    assert calls, "the decode kernels did not run"
    _close(got, want, mx.bfloat16)
