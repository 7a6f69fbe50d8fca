"""Parity of every fused op with its float64 / mlx-lm reference, on the CPU fallback and
(`cuda` marker) on the CUDA kernel; gradients; determinism."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import (
    DEVICES,
    DTYPES,
    assert_close,
    f64,
    gelu64,
    gelu_tanh64,
    on_device,
    poison,
    silu64,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from zmlx_rs import _backend, kernels, reference

GLU_SHAPES = [(1, 768), (4096, 768), (3, 1001), (2, 5, 13), (7,), (1, 1, 4097)]
ACTS = {
    "swiglu": (lambda g, u, d: kernels.swiglu(g, u, differentiable=d, kernel=True), silu64),
    "geglu": (lambda g, u, d: kernels.geglu(g, u, differentiable=d), gelu64),
    "geglu_tanh": (
        lambda g, u, d: kernels.geglu(g, u, approximate=True, differentiable=d),
        gelu_tanh64,
    ),
}
# Both entry points: the differentiable wrapper and the bare inference kernel.
DIFF = [pytest.param(True, id="grad"), pytest.param(False, id="infer")]


@pytest.fixture(params=DEVICES)
def device(request):
    with on_device(request.param):
        if request.param == "gpu":
            assert _backend.on_cuda()
        yield request.param


def rand(shape, dtype, scale=2.0):
    return (scale * mx.random.normal(shape)).astype(dtype)


# ---------------------------------------------------------------------------------------
# gated activations


@pytest.mark.parametrize("shape", GLU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("differentiable", DIFF)
def test_glu_matches_float64(device, shape, dtype, act, differentiable):
    fn, ref64 = ACTS[act]
    gate, up = rand(shape, dtype), rand(shape, dtype)
    poison((shape, dtype))
    out = fn(gate, up, differentiable)
    mx.eval(out)
    assert out.dtype == dtype and out.shape == gate.shape
    assert_close(out, ref64(f64(gate)) * f64(up), dtype, scale=4.0)


@pytest.mark.parametrize("shape", [(1, 1536), (4096, 1536), (3, 2002), (2, 5, 26), (1, 2)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", [None, False, True], ids=["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("differentiable", DIFF)
def test_glu_packed_matches_float64(device, shape, dtype, approximate, differentiable):
    h = rand(shape, dtype)
    half = shape[-1] // 2
    out_shape = (*shape[:-1], half)
    poison((out_shape, dtype))
    if approximate is None:
        out, act64 = kernels.swiglu_packed(h, differentiable=differentiable), silu64
    else:
        out = kernels.geglu_packed(h, approximate=approximate, differentiable=differentiable)
        act64 = gelu_tanh64 if approximate else gelu64
    mx.eval(out)
    assert out.shape == out_shape and out.dtype == dtype
    h64 = f64(h)
    assert_close(out, act64(h64[..., :half]) * h64[..., half:], dtype, scale=4.0)


def test_glu_on_a_sliced_view(device):
    """A row-contiguous slice with an offset must not take the 16-byte vector path."""
    base = rand((9, 64), mx.float16)
    gate, up = base[1:5], base[5:9]
    out = kernels.swiglu(gate, up, kernel=True)
    assert_close(out, silu64(f64(gate)) * f64(up), mx.float16, scale=4.0)
    h = rand((3, 130), mx.bfloat16)[:, 1:129]
    out = kernels.swiglu_packed(h)
    h64 = f64(h)
    assert_close(out, silu64(h64[:, :64]) * h64[:, 64:], mx.bfloat16, scale=4.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["swiglu", "geglu", "geglu_tanh"])
def test_glu_gradients_match_reference(device, dtype, act):
    gate, up, w = rand((5, 72), dtype), rand((5, 72), dtype), rand((5, 72), dtype)
    approximate = act == "geglu_tanh"

    def fused(g, u):
        if act == "swiglu":
            y = kernels.swiglu(g, u, kernel=True)
        else:
            y = kernels.geglu(g, u, approximate)
        return (y.astype(mx.float32) * w.astype(mx.float32)).sum()

    def ref(g, u):
        if act == "swiglu":
            y = reference.swiglu(g.astype(mx.float32), u.astype(mx.float32))
        else:
            y = reference.geglu(g.astype(mx.float32), u.astype(mx.float32), approximate)
        return (y * w.astype(mx.float32)).sum()

    got = mx.grad(fused, argnums=(0, 1))(gate, up)
    want = mx.grad(ref, argnums=(0, 1))(gate, up)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, f64(r), dtype, scale=8.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", [None, False, True])
def test_glu_packed_gradient_matches_reference(device, dtype, approximate):
    h, w = rand((3, 4, 48), dtype), rand((3, 4, 24), dtype)

    def fused(x):
        if approximate is None:
            y = kernels.swiglu_packed(x)
        else:
            y = kernels.geglu_packed(x, approximate)
        return (y.astype(mx.float32) * w.astype(mx.float32)).sum()

    def ref(x):
        x = x.astype(mx.float32)
        if approximate is None:
            y = reference.swiglu_packed(x)
        else:
            y = reference.geglu_packed(x, approximate)
        return (y * w.astype(mx.float32)).sum()

    got = mx.grad(fused)(h)
    assert got.shape == h.shape and got.dtype == dtype
    assert_close(got, f64(mx.grad(ref)(h)), dtype, scale=8.0)


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    half=st.integers(1, 300),
    dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]),
)
def test_glu_random_shapes(lead, half, dtype):
    h = rand((*lead, 2 * half), dtype)
    h64 = f64(h)
    want = silu64(h64[..., :half]) * h64[..., half:]
    assert_close(kernels.swiglu_packed(h), want, dtype, scale=4.0)
    assert_close(kernels.swiglu(h[..., :half], h[..., half:]), want, dtype, scale=4.0)


@pytest.mark.cuda
def test_swiglu_runs_its_kernel_from_the_size_threshold(monkeypatch):
    """kernel=None: the compiled reference below GLU_KERNEL_MIN_SIZE elements, the kernel
    from there on; True / False force either."""
    if not _backend.on_cuda():
        pytest.skip("needs MLX with a CUDA GPU")
    launched = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def __call__(self, inputs, launch):
            launched.append(inputs[0].shape)
            return self.kernel(inputs, launch)

    monkeypatch.setattr(kernels, "_GLU", Spy(kernels._GLU))
    monkeypatch.setattr(kernels, "GLU_KERNEL_MIN_SIZE", 64)
    small, large = rand((3, 21), mx.bfloat16), rand((4, 16), mx.bfloat16)
    for x, kernel, runs in [
        (small, None, False),
        (large, None, True),
        (small, True, True),
        (large, False, False),
    ]:
        launched.clear()
        out = kernels.swiglu(x, x, differentiable=False, kernel=kernel)
        want = reference.swiglu(x, x)
        assert launched == ([x.shape] if runs else []), (x.shape, kernel)
        assert_close(out, f64(want), mx.bfloat16, scale=4.0)


def test_kernel_argument_is_checked():
    x = mx.ones((2, 4))
    with pytest.raises(ValueError, match=r"swiglu\(\): 'kernel' must be None, True or False"):
        kernels.swiglu(x, x, kernel="yes")


def all_values(dtype):
    """Every finite value of a half dtype (NaN and inf left out), or a spread of fp32 ones."""
    if dtype == mx.float32:
        return mx.random.normal((1 << 16,)) * 8.0
    bits = np.arange(1 << 16, dtype=np.uint16)
    exponent = (bits >> 7) & 0xFF if dtype == mx.bfloat16 else (bits >> 10) & 0x1F
    finite = exponent != (0xFF if dtype == mx.bfloat16 else 0x1F)
    return mx.array(bits[finite]).view(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("packed", [False, True], ids=["two", "packed"])
@pytest.mark.parametrize("differentiable", DIFF)
def test_swiglu_mlx_rounding_is_mlx_lm_bitwise(device, dtype, packed, differentiable):
    # mlx-lm's SwiGLU, compiled as mlx-lm compiles it and as plain ops: every gate value of
    # the dtype against random up values, bit for bit.
    gate = all_values(dtype)
    up = rand(gate.shape, dtype)
    want = nn.silu(gate) * up
    want_compiled = mx.compile(lambda g, u: nn.silu(g) * u)(gate, up)
    poison((gate.shape, dtype))
    if packed:
        h = mx.concatenate([gate[:, None], up[:, None]], axis=-1)
        got = kernels.swiglu_packed(h, rounding="mlx", differentiable=differentiable)[:, 0]
    else:
        got = kernels.swiglu(gate, up, rounding="mlx", differentiable=differentiable, kernel=True)
    mx.eval(got, want, want_compiled)
    assert got.dtype == dtype
    for w in (want, want_compiled):
        same = np.array(got.view(mx.uint16 if dtype != mx.float32 else mx.uint32)) == np.array(
            w.view(mx.uint16 if dtype != mx.float32 else mx.uint32)
        )
        assert same.all(), (
            f"{(~same).sum()} of {same.size} differ, e.g. at {np.nonzero(~same)[0][:5]}"
        )


@pytest.mark.parametrize("op", ["swiglu", "swiglu_packed", "gather_add"])
def test_rounding_argument_is_checked(op):
    x = mx.ones((2, 4))
    fn = {
        "swiglu": lambda r: kernels.swiglu(x, x, rounding=r),
        "swiglu_packed": lambda r: kernels.swiglu_packed(x, rounding=r),
        "gather_add": lambda r: kernels.gather_add(x, mx.ones((2,)), rounding=r),
    }[op]
    with pytest.raises(ValueError, match="'rounding' must be 'fp32' or 'mlx'"):
        fn("bf16")


# ---------------------------------------------------------------------------------------
# gather_add


@pytest.mark.parametrize(
    "shape", [(1, 1, 8, 2048), (4096, 8, 64), (3, 2, 1001), (2, 3, 1, 5), (1, 4, 4096)], ids=str
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score_dtype", [mx.float32, None], ids=["f32scores", "samescores"])
@pytest.mark.parametrize("differentiable", DIFF)
def test_gather_add_matches_float64(device, shape, dtype, score_dtype, differentiable):
    y = rand(shape, dtype)
    scores = mx.random.uniform(shape=shape[:-1]).astype(score_dtype or dtype)
    out_shape = (*shape[:-2], shape[-1])
    poison((out_shape, dtype))
    out = kernels.gather_add(y, scores, differentiable=differentiable)
    mx.eval(out)
    assert out.shape == out_shape and out.dtype == dtype
    want = (f64(y) * f64(scores)[..., None]).sum(axis=-2)
    assert_close(out, want, dtype, scale=float(shape[-2]))


@pytest.mark.parametrize("shape", [(1, 1, 8, 2048), (4096, 8, 64), (3, 2, 1001)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score_dtype", [mx.float32, None], ids=["f32scores", "samescores"])
def test_gather_add_mlx_rounding_is_mlx_lm(device, shape, dtype, score_dtype):
    # mlx-lm's combine: the products in the dtype MLX gives them, then the sum. Half-type
    # products MLX's GPU reduction sums in k order in their dtype (probed on an H100): bit for
    # bit there. fp32 products it sums in another order, and MLX's CPU reduction rounds
    # otherwise: the dtype's tolerance.
    y = rand(shape, dtype)
    scores = mx.random.uniform(shape=shape[:-1]).astype(score_dtype or dtype)
    out_shape = (*shape[:-2], shape[-1])
    poison((out_shape, dtype))
    got = kernels.gather_add(y, scores, rounding="mlx", differentiable=False)
    want = (y * scores[..., None]).sum(axis=-2).astype(dtype)
    assert got.shape == out_shape and got.dtype == dtype
    if device == "gpu" and score_dtype is None and dtype != mx.float32:
        assert bool(mx.array_equal(got, want))
    else:
        assert_close(got, f64(want), dtype, scale=float(shape[-2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_add_gradients(device, dtype):
    y, s, w = rand((3, 4, 40), dtype), mx.random.uniform(shape=(3, 4)), rand((3, 40), dtype)

    def fused(y, s):
        return (kernels.gather_add(y, s).astype(mx.float32) * w.astype(mx.float32)).sum()

    def ref(y, s):
        return (reference.gather_add(y.astype(mx.float32), s) * w.astype(mx.float32)).sum()

    got = mx.grad(fused, argnums=(0, 1))(y, s)
    want = mx.grad(ref, argnums=(0, 1))(y, s)
    assert got[0].dtype == dtype and got[1].dtype == mx.float32
    assert_close(got[0], f64(want[0]), dtype, scale=4.0)
    assert_close(got[1], f64(want[1]), dtype, scale=40.0)


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 7), min_size=0, max_size=2),
    k=st.integers(1, 9),
    hidden=st.integers(1, 260),
    dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]),
)
def test_gather_add_random_shapes(lead, k, hidden, dtype):
    y = rand((*lead, k, hidden), dtype)
    s = mx.random.uniform(shape=(*lead, k))
    want = (f64(y) * f64(s)[..., None]).sum(axis=-2)
    assert_close(kernels.gather_add(y, s), want, dtype, scale=float(k))


# ---------------------------------------------------------------------------------------
# moe_gating: against mlx-lm's own gating code, indices exact up to ties


def mlx_lm_gating(logits, k, mode, norm_topk, bias=None, scale=1.0):
    """The gating lines of mlx-lm's qwen3_moe / mixtral / glm4_moe, verbatim in spirit."""
    if mode == "softmax":  # qwen3_moe.Qwen3MoeSparseMoeBlock
        gates = mx.softmax(logits, axis=-1, precise=True)
        inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
        scores = mx.take_along_axis(gates, inds, axis=-1)
        if norm_topk:
            scores = scores / scores.sum(axis=-1, keepdims=True)
        return scores * scale if scale != 1.0 else scores, inds, gates
    if mode == "topk_softmax":  # mixtral.MixtralSparseMoeBlock
        inds = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]
        scores = mx.take_along_axis(logits, inds, axis=-1)
        scores = mx.softmax(scores, axis=-1, precise=True)
        return scores * scale if scale != 1.0 else scores, inds, logits
    # glm4_moe / deepseek_v3 group_expert_select with n_group == 1
    orig = mx.sigmoid(logits.astype(mx.float32))
    sel = orig + bias if bias is not None else orig
    inds = mx.argpartition(-sel, kth=k - 1, axis=-1)[..., :k]
    scores = mx.take_along_axis(orig, inds, axis=-1)
    if k > 1 and norm_topk:
        scores = scores / scores.sum(axis=-1, keepdims=True)
    return scores * scale, inds, sel


def check_gating(logits, k, mode, norm_topk, bias, scale, differentiable=True):
    dtype = logits.dtype
    out_shape = (*logits.shape[:-1], k)
    poison((out_shape, dtype), (out_shape, mx.uint32))
    scores, indices = kernels.moe_gating(
        logits,
        k,
        mode=mode,
        norm_topk=norm_topk,
        bias=bias,
        scale=scale,
        differentiable=differentiable,
    )
    mx.eval(scores, indices)
    want_scores, want_inds, rank = mlx_lm_gating(logits, k, mode, norm_topk, bias, scale)
    assert indices.dtype == mx.uint32 and indices.shape == out_shape
    assert scores.shape == out_shape
    assert scores.dtype == (mx.float32 if mode == "sigmoid" else dtype)
    n_experts = logits.shape[-1]
    ours = np.array(indices).reshape(-1, k).astype(np.int64)
    theirs = np.array(want_inds.astype(mx.int64)).reshape(-1, k)
    assert ours.min() >= 0 and ours.max() < n_experts
    assert all(len(set(row)) == k for row in ours), "an expert picked twice"
    # Same selection up to ties: the multisets of ranking values picked are equal.
    r = f64(rank).reshape(-1, n_experts)
    picked_ours = -np.sort(-np.take_along_axis(r, ours, axis=-1), axis=-1)
    picked_theirs = -np.sort(-np.take_along_axis(r, theirs, axis=-1), axis=-1)
    rtol, atol = (1e-6, 1e-7) if dtype == mx.float32 or mode == "sigmoid" else (1e-2, 1e-3)
    np.testing.assert_allclose(picked_ours, picked_theirs, rtol=rtol, atol=atol)
    # Ours are ordered by descending rank value, up to the same tolerance (our fp32 sigmoid
    # and MLX's may differ by an ulp, which can swap two experts that far apart).
    picked = np.take_along_axis(r, ours, axis=-1)
    assert np.all(np.diff(picked, axis=-1) <= atol + rtol * np.abs(picked[:, 1:]))
    # Scores: where the selections agree as sets, the per-expert scores agree.
    ours_s, theirs_s = f64(scores).reshape(-1, k), f64(want_scores).reshape(-1, k)
    tol = (1e-5, 1e-6) if scores.dtype == mx.float32 else (2e-2, 2e-3)
    for row in range(ours.shape[0]):
        if set(ours[row]) != set(theirs[row]):
            continue
        order = {int(e): i for i, e in enumerate(theirs[row])}
        want = np.array([theirs_s[row, order[int(e)]] for e in ours[row]])
        np.testing.assert_allclose(ours_s[row], want, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("tokens", [1, 5, 4096])
@pytest.mark.parametrize(
    ("experts", "k"), [(8, 1), (8, 2), (64, 4), (60, 4), (128, 8), (256, 8), (512, 16)]
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("mode", "norm_topk"),
    [("softmax", True), ("softmax", False), ("topk_softmax", True), ("sigmoid", True)],
)
def test_moe_gating_matches_mlx_lm(device, tokens, experts, k, dtype, mode, norm_topk):
    if tokens == 4096 and experts > 128 and device == "cpu":
        pytest.skip("large CPU case covered at 128 experts")
    logits = rand((tokens, experts), dtype, scale=3.0)
    bias = None
    scale = 1.0
    if mode == "sigmoid":
        bias = 0.1 * mx.random.normal((experts,))
        scale = 2.5
    check_gating(logits, k, mode, norm_topk, bias, scale)


@pytest.mark.parametrize("experts", [128, 60, 256])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("ties", "norm_topk"), [("higher", True), ("lower", False)])
def test_moe_gating_mlx_rounding_is_mlx_lm(device, experts, dtype, ties, norm_topk):
    # mlx-lm's own lines (qwen3_moe: top of an ascending argpartition, renormalised; qwen2_moe:
    # head of a descending one), positions and all. On the GPU bit for bit where the kernel
    # repeats MLX's softmax (up to 32 * 16 / itemsize experts), else within the dtype's
    # tolerance with the same picks.
    logits = rand((64, experts), dtype)
    k = 8
    got_s, got_i = kernels.moe_gating(
        logits, k, norm_topk=norm_topk, ties=ties, rounding="mlx", differentiable=False
    )
    g = mx.softmax(logits, axis=-1, precise=True)
    if ties == "higher":
        want_i = mx.argpartition(g, kth=-k, axis=-1)[..., -k:]
    else:
        want_i = mx.argpartition(-g, kth=k - 1, axis=-1)[..., :k]
    want_s = mx.take_along_axis(g, want_i, axis=-1)
    if norm_topk:
        want_s = want_s / want_s.sum(axis=-1, keepdims=True)
    assert got_s.dtype == dtype and got_i.dtype == mx.uint32
    if device == "gpu" and experts * dtype.size <= 512:
        assert bool(mx.array_equal(got_i, want_i.astype(mx.uint32)))
        assert bool(mx.array_equal(got_s, want_s))
    else:
        got_sorted = mx.sort(got_i, axis=-1)
        assert bool(mx.array_equal(got_sorted, mx.sort(want_i.astype(mx.uint32), axis=-1)))
        assert_close(got_s, f64(want_s), dtype)
    with pytest.raises(ValueError, match="'rounding' must be 'fp32' or 'mlx'"):
        kernels.moe_gating(logits, k, rounding="bf16")


def test_moe_gating_leading_dims_and_sigmoid_without_bias(device):
    logits = rand((2, 3, 40), mx.float32)
    check_gating(logits, 3, "sigmoid", True, None, 1.0)
    check_gating(logits, 3, "sigmoid", True, 0.5 * mx.random.normal((40,)), 1.5, False)
    check_gating(logits, 5, "softmax", True, None, 1.0, differentiable=False)
    check_gating(logits, 2, "topk_softmax", True, None, 1.0, differentiable=False)
    check_gating(logits, 1, "sigmoid", True, None, 1.0)
    check_gating(rand((2, 1, 3, 16), mx.bfloat16), 2, "softmax", True, None, 1.0)


def test_moe_gating_ties_and_nan(device):
    logits = mx.zeros((3, 32))
    scores, indices = kernels.moe_gating(logits, 4)
    idx = np.array(indices)
    assert all(len(set(row)) == 4 and max(row) < 32 for row in idx)
    np.testing.assert_allclose(np.array(scores), 0.25, rtol=1e-6)
    if device == "gpu":  # the kernel breaks ties by the rule asked and never picks NaN
        assert idx.tolist() == [[0, 1, 2, 3]] * 3
        _, high = kernels.moe_gating(logits, 4, ties="higher")
        assert np.array(high).tolist() == [[31, 30, 29, 28]] * 3
        bad = mx.array([[float("nan"), 1.0, 0.5, float("nan")]])
        _, i = kernels.moe_gating(bad, 2, mode="topk_softmax")
        assert np.array(i).tolist() == [[1, 2]]


@pytest.mark.parametrize("mode", ["softmax", "topk_softmax", "sigmoid"])
def test_moe_gating_scores_are_differentiable(device, mode):
    logits = rand((3, 16), mx.float32)
    w = mx.random.normal((3, 4))

    def fused(lg):
        s, _ = kernels.moe_gating(lg, 4, mode=mode)
        return (s * w).sum()

    _, inds = kernels.moe_gating(logits, 4, mode=mode)

    def ref(lg):
        return (reference.moe_scores_for(lg, inds, mode=mode) * w).sum()

    assert_close(mx.grad(fused)(logits), f64(mx.grad(ref)(logits)), mx.float32)


@settings(max_examples=30, deadline=None)
@given(
    lead=st.lists(st.integers(1, 6), min_size=1, max_size=2),
    experts=st.integers(1, 300),
    data=st.data(),
)
def test_moe_gating_random_shapes(lead, experts, data):
    k = data.draw(st.integers(1, min(16, experts)))
    mode = data.draw(st.sampled_from(["softmax", "topk_softmax", "sigmoid"]))
    check_gating(rand((*lead, experts), mx.float32, 3.0), k, mode, True, None, 1.0)


# ---------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_distribution_and_scaling(device, dtype, p):
    n = 200_003
    x = (mx.random.uniform(shape=(n,)) + 0.5).astype(dtype)
    poison(((n,), dtype))
    out = kernels.dropout(x, p, key=mx.random.key(7))
    mx.eval(out)
    assert out.dtype == dtype and out.shape == x.shape
    o, x64 = f64(out), f64(x)
    kept = o != 0
    # Keep rate 1 - p within 6 standard deviations of a Binomial(n, 1 - p).
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 6 * sd
    rtol, _ = {mx.float32: (1e-6, 0), mx.float16: (1e-3, 0), mx.bfloat16: (8e-3, 0)}[dtype]
    np.testing.assert_allclose(o[kept], x64[kept] / (1 - p), rtol=rtol)


def test_dropout_is_deterministic_per_key(device):
    x = mx.random.normal((64, 129))
    a = kernels.dropout(x, 0.3, key=mx.random.key(1))
    b = kernels.dropout(x, 0.3, key=mx.random.key(1))
    c = kernels.dropout(x, 0.3, key=mx.random.key(2))
    assert mx.array_equal(a, b)
    assert not mx.array_equal(a, c)
    # Without a key, draws follow MLX's global seed.
    mx.random.seed(3)
    d = kernels.dropout(x, 0.3)
    mx.random.seed(3)
    e = kernels.dropout(x, 0.3)
    assert mx.array_equal(d, e)
    assert kernels.dropout(x, 0.0) is x


def test_dropout_draws_its_key_as_uncompiled_randint_would():
    """Without a key, the compiled draw gives randint's keys and leaves MLX's random state
    where randint leaves it, call after call (and a draw changes the next key)."""
    mx.random.seed(11)
    want = [kernels._draw_key() for _ in range(3)]
    state_want = mx.random.state[0]
    mx.random.seed(11)
    got = [kernels._key_drawer()() for _ in range(3)]
    state_got = mx.random.state[0]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == mx.uint32 and g.shape == (4,)
        assert mx.array_equal(g, w)
    assert mx.array_equal(state_got, state_want)
    assert not mx.array_equal(got[0], got[1])


def test_dropout_mask_depends_only_on_key_and_position(device):
    """Vectorised (size % 8 == 0) and scalar launches draw the same mask for a position."""
    x = mx.ones((4096,), mx.bfloat16)
    key = mx.random.key(9)
    full = np.array(kernels.dropout(x, 0.5, key=key).astype(mx.float32))
    part = np.array(kernels.dropout(x[:4093], 0.5, key=key).astype(mx.float32))
    if device == "gpu":
        np.testing.assert_array_equal(full[:4093], part)


def test_empty_arrays(device):
    e = mx.zeros((0, 8))
    assert kernels.swiglu(e, e).shape == (0, 8)
    assert kernels.swiglu_packed(e, differentiable=False).shape == (0, 4)
    assert kernels.gather_add(mx.zeros((0, 2, 8)), mx.zeros((0, 2))).shape == (0, 8)
    scores, indices = kernels.moe_gating(e, 2)
    assert scores.shape == (0, 2) and indices.dtype == mx.uint32
    assert kernels.dropout(e, 0.5).shape == (0, 8)


def test_dropout_mask_is_independent_across_positions(device):
    """Neighbouring elements (same Philox draw, adjacent threads) are uncorrelated."""
    x = mx.ones((400_000,))
    kept = np.array(kernels.dropout(x, 0.5, key=mx.random.key(11))) != 0
    a, b = kept[:-1].astype(float), kept[1:].astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    assert abs(np.corrcoef(kept[:-4].astype(float), kept[4:].astype(float))[0, 1]) < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_gradient_uses_the_forward_mask(device, dtype):
    x = rand((33, 65), dtype)
    w = rand((33, 65), mx.float32)
    key = mx.random.key(5)
    out = kernels.dropout(x, 0.25, key=key)
    grad = mx.grad(lambda v: (kernels.dropout(v, 0.25, key=key).astype(mx.float32) * w).sum())(x)
    assert grad.dtype == dtype
    want = (f64(out) != 0) * f64(w) / 0.75
    assert_close(grad, want, dtype, scale=4.0)
