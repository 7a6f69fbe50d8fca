"""Fused kernels for mlx-lm hot paths.

On MLX-CUDA each op is one `mx.fast.cuda_kernel` node whose source, specialisation, launch
geometry and input validation come from the Rust catalog. On other backends (CPU, Metal) the
same validation runs, then the pure-MLX reference in `zmlx_rs.reference`. Gradients go
through `mx.custom_function` vjps (themselves kernels where that pays).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx

from zmlx_rs import _backend, _compile, _native
from zmlx_rs import reference as ref

__all__ = [
    "add_rms_norm",
    "dropout",
    "gather_add",
    "gather_qmv_combine",
    "gather_qmv_swiglu",
    "geglu",
    "geglu_packed",
    "moe_gating",
    "qk_norm_rope",
    "qk_rms_norm",
    "qkv_rope",
    "qmv",
    "swiglu",
    "swiglu_packed",
]

_DTYPE_NAMES: dict[mx.Dtype, str] = {
    getattr(mx, n): n
    for n in (
        "bool_",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
    )
}
_DTYPE_NAMES[mx.bool_] = "bool"
_DTYPES: dict[str, mx.Dtype] = {v: k for k, v in _DTYPE_NAMES.items()}
_precompiled_kernel = getattr(mx.fast, "precompiled_cuda_kernel", None)
# Prefill sees a new token count per prompt; bound the per-signature launch caches.
_MAX_LAUNCHES = 4096


def _dtype_name(a: Any, arg: str, op: str) -> str:
    if not isinstance(a, mx.array):
        raise _native.ZmlxError(
            f"{op}(): '{arg}' must be an mlx.core.array, got {type(a).__name__}"
        )
    return _DTYPE_NAMES[a.dtype]


class _Launch:
    """A native Launch converted once into the arguments `cuda_kernel` objects take."""

    __slots__ = (
        "call",
        "empty",
        "grid",
        "native",
        "output_dtypes",
        "output_shapes",
        "precompiled",
        "template",
        "threadgroup",
    )

    def __init__(self, launch: _native.Launch) -> None:
        self.template = [(n, _DTYPES[v] if isinstance(v, str) else v) for n, v in launch.template]
        self.grid = launch.grid
        self.threadgroup = launch.threadgroup
        self.output_shapes = [tuple(s) for s in launch.output_shapes]
        self.output_dtypes = [_DTYPES[d] for d in launch.output_dtypes]
        # Empty arrays: CUDA cannot launch zero blocks, and there is nothing to compute.
        self.empty = launch.grid[0] == 0
        self.native = launch
        # (symbol, cubin) once resolved; False: this launch runs the JIT kernel.
        self.precompiled: tuple[str, bytes] | bool | None = None
        # The launch's node, bound once (see _Kernel._bind).
        self.call: Callable[..., list[mx.array]] | None = None


# `mx.fast.cuda_kernel` objects by catalog kernel name, built on first use.
_JIT: dict[str, Any] = {}


def _jit_kernel(name: str) -> Any:
    fn = _JIT.get(name)
    if fn is None:
        spec = _native.kernel_spec(name)
        fn = _JIT[name] = mx.fast.cuda_kernel(
            name=spec.name,
            input_names=spec.input_names,
            output_names=spec.output_names,
            source=spec.source,
            header=spec.header,
        )
    return fn


class _Kernel:
    """One planner: its launches run the catalog kernel the plan names (a planner may pick
    among several). Each launch signature resolves once to a cubin precompiled with NVRTC
    (`zmlx_rs._compile`, disk-cached) run by `mx.fast.precompiled_cuda_kernel`, or else to the
    kernel's `mx.fast.cuda_kernel` object; a steady-state call is a dict hit and one node.
    `precompiled=False` pins the JIT path (benchmarks compare the two)."""

    __slots__ = ("_launches", "_plan", "precompiled")

    def __init__(self, plan: Callable[..., _native.Launch], precompiled: bool = True) -> None:
        self._plan = plan
        self._launches: dict[tuple, _Launch] = {}
        self.precompiled = precompiled

    def launch(self, key: tuple, *plan_args: Any) -> _Launch:
        """Validates (in Rust) the first time a signature is seen; raises ZmlxError subclasses."""
        got = self._launches.get(key)
        if got is None:
            got = _Launch(self._plan(*plan_args))
            if len(self._launches) >= _MAX_LAUNCHES:
                self._launches.clear()
            self._launches[key] = got
        return got

    def launch_for(self, key: tuple, op: str, arrays: dict[str, Any], *scalars: Any) -> _Launch:
        """`launch` for a plan that takes each array as its (shape, dtype name), then
        scalars; the names are the arguments errors mention."""
        specs = [_array_spec(a, name, op) for name, a in arrays.items()]
        return self.launch(key, *specs, *scalars)

    def _resolve(self, inputs: Sequence[mx.array], launch: _Launch) -> tuple | bool:
        found = None
        if self.precompiled:
            found = _compile.precompiled(launch.native, [_DTYPE_NAMES[a.dtype] for a in inputs])
        if found is None:
            launch.precompiled = False
        else:
            launch.precompiled = found
        return launch.precompiled

    def _bind(self, inputs: Sequence[mx.array], launch: _Launch) -> Callable[..., list]:
        """The launch's node as an `mx.compile`d function of the inputs. Calling the kernel
        object directly rebuilds its source and a new primitive on every call, and each
        evaluation then hashes and copies that source; the compiled function replays one
        traced primitive. Measured on an H100 at decode size (one call): build 6.5 -> 2.4 µs,
        eval 7.0 -> 4.9 µs, below one `mx.compile`d MLX elementwise node (2.6 + 6.3 µs)."""
        pre = launch.precompiled
        if pre is None:
            pre = self._resolve(inputs, launch)
        if pre:
            name, cubin = pre

            def node(*xs: mx.array) -> list[mx.array]:
                return _precompiled_kernel(
                    name=name,
                    compiled_source=cubin,
                    inputs=list(xs),
                    output_shapes=launch.output_shapes,
                    output_dtypes=launch.output_dtypes,
                    scalars=[],
                    grid=launch.grid,
                    threadgroup=launch.threadgroup,
                    ensure_row_contiguous=True,
                )

        else:
            fn = _jit_kernel(launch.native.kernel)

            def node(*xs: mx.array) -> list[mx.array]:
                return fn(
                    inputs=list(xs),
                    template=launch.template,
                    grid=launch.grid,
                    threadgroup=launch.threadgroup,
                    output_shapes=launch.output_shapes,
                    output_dtypes=launch.output_dtypes,
                )

        return mx.compile(node)

    def __call__(self, inputs: Sequence[mx.array], launch: _Launch) -> list[mx.array]:
        if launch.empty:
            shapes, dtypes = launch.output_shapes, launch.output_dtypes
            return [mx.zeros(s, d) for s, d in zip(shapes, dtypes, strict=True)]
        call = launch.call
        if call is None:
            call = launch.call = self._bind(inputs, launch)
        return call(*inputs)


_GLU = _Kernel(_native.plan_glu)
_GLU_BWD = _Kernel(_native.plan_glu_backward)
_GLU_PACKED = _Kernel(_native.plan_glu_packed)
_GLU_PACKED_BWD = _Kernel(_native.plan_glu_packed_backward)
_DROPOUT = _Kernel(_native.plan_dropout)
_GATING = _Kernel(_native.plan_moe_gating)  # the plan picks the biased kernel for a bias
_GATHER_ADD = _Kernel(_native.plan_gather_add)

# ---------------------------------------------------------------------------------------
# Gated activations


def _glu_launch(act: str, gate: mx.array, up: mx.array, op: str) -> _Launch:
    try:
        key: tuple = (act, gate.shape, up.shape, gate.dtype, up.dtype)
        got = _GLU._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    g = _dtype_name(gate, "gate", op)
    u = _dtype_name(up, "up", op)
    return _GLU.launch(key, act, list(gate.shape), g, list(up.shape), u)


def _make_glu(act: str) -> Callable[[mx.array, mx.array, _Launch], mx.array]:
    @mx.custom_function
    def fused(gate: mx.array, up: mx.array, launch: _Launch) -> mx.array:
        return _GLU([gate, up], launch)[0]

    @fused.vjp
    def fused_vjp(primals, cotangent, output):
        gate, up, _ = primals
        launch = _GLU_BWD.launch(
            (act, gate.shape, gate.dtype, cotangent.shape, cotangent.dtype),
            act,
            list(gate.shape),
            _DTYPE_NAMES[gate.dtype],
            list(cotangent.shape),
            _DTYPE_NAMES[cotangent.dtype],
        )
        d_gate, d_up = _GLU_BWD([gate, up, cotangent], launch)
        return d_gate, d_up, None

    return fused


_GLU_FUSED = {a: _make_glu(a) for a in ("silu", "silu_mlx", "gelu", "gelu_approx")}


def _mlx_rounding(rounding: Any, op: str) -> bool:
    """True for ``rounding="mlx"``, False for ``"fp32"``; anything else is an error."""
    if rounding == "mlx":
        return True
    if rounding == "fp32":
        return False
    raise _native.ZmlxError(f"{op}(): 'rounding' must be 'fp32' or 'mlx', got {rounding!r}")


def _silu_act(rounding: Any, op: str) -> str:
    return "silu_mlx" if _mlx_rounding(rounding, op) else "silu"


# Element count from which swiglu (gate and up apart) runs its CUDA kernel by default. Its
# gate and up are separate arrays already, so the kernel removes no node: it replaces one
# compiled MLX elementwise node (the fp32 reference) with one custom-kernel node, which costs
# ~1 us more to build and encode. Measured (H100, benchmarks/kernels.py, bf16): up to 917K
# elements (32 tokens of Mixtral-8x7B) that host cost decides and the kernel ran 0.94-0.98x
# of the compiled node; at 12.6M (Qwen3-30B-A3B prefill) the kernel's own GPU time is 10%
# lower (26.8 against 29.9 us from the CUDA profiler) and at 29M-59M it reaches the copy
# kernel's bandwidth. 2^22 is where 10% of the GPU time (~1.2 us) outweighs the host cost.
# The packed forms always run the kernel: it saves the split.
GLU_KERNEL_MIN_SIZE = 1 << 22


def _glu_kernel(kernel: Any, size: int, op: str) -> bool:
    """Whether a swiglu call of `size` elements runs the CUDA kernel."""
    if kernel is None:
        return size >= GLU_KERNEL_MIN_SIZE
    if not isinstance(kernel, bool):
        raise _native.ZmlxError(f"{op}(): 'kernel' must be None, True or False, got {kernel!r}")
    return kernel


def swiglu(
    gate: mx.array,
    up: mx.array,
    *,
    rounding: str = "fp32",
    differentiable: bool = True,
    kernel: bool | None = None,
) -> mx.array:
    """`silu(gate) * up`, returned in the inputs' dtype (gate and up must agree).

    ``rounding="fp32"`` computes in fp32 and rounds once; ``"mlx"`` rounds every op to the
    inputs' dtype as MLX evaluates mlx-lm's ``nn.silu(gate) * up`` (bit-identical to it on
    MLX-CUDA), which is what keeps a patched model's tokens those of the unpatched one.
    ``differentiable=False`` skips the gradient wrapper: on CUDA that is two fewer graph
    nodes and ~3 µs less per call, for inference paths that never take gradients.
    On MLX-CUDA, ``kernel=None`` runs the fused kernel from `GLU_KERNEL_MIN_SIZE` elements
    on and the compiled MLX reference (one node, same math) below, where it is cheaper;
    ``True`` / ``False`` force either. Other backends always run the reference.
    """
    act = _silu_act(rounding, "swiglu")
    launch = _glu_launch(act, gate, up, "swiglu")
    if _glu_kernel(kernel, gate.size, "swiglu") and _backend.on_cuda():
        if differentiable:
            return _GLU_FUSED[act](gate, up, launch)
        return _GLU([gate, up], launch)[0]
    return ref.swiglu(gate, up, rounding)


def geglu(
    gate: mx.array, up: mx.array, approximate: bool = False, *, differentiable: bool = True
) -> mx.array:
    """`gelu(gate) * up`; `approximate=True` uses the tanh form (`nn.gelu_approx`).
    ``differentiable`` as in :func:`swiglu`. On MLX-CUDA always the kernel: the fp32
    reference of the gelu forms is no cheaper at any size (H100: 11 µs against the kernel's
    5 µs per call at one Mistral-7B token)."""
    act = "gelu_approx" if approximate else "gelu"
    launch = _glu_launch(act, gate, up, "geglu")
    if _backend.on_cuda():
        if differentiable:
            return _GLU_FUSED[act](gate, up, launch)
        return _GLU([gate, up], launch)[0]
    return ref.geglu(gate, up, approximate)


def _packed_launch(act: str, h: mx.array, op: str) -> _Launch:
    try:
        key: tuple = (act, h.shape, h.dtype)
        got = _GLU_PACKED._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    return _GLU_PACKED.launch(key, act, list(h.shape), _dtype_name(h, "h", op))


def _make_glu_packed(act: str) -> Callable[[mx.array, _Launch], mx.array]:
    @mx.custom_function
    def fused(h: mx.array, launch: _Launch) -> mx.array:
        return _GLU_PACKED([h], launch)[0]

    @fused.vjp
    def fused_vjp(primals, cotangent, output):
        h, _ = primals
        launch = _GLU_PACKED_BWD.launch(
            (act, h.shape, h.dtype, cotangent.shape, cotangent.dtype),
            act,
            list(h.shape),
            _DTYPE_NAMES[h.dtype],
            list(cotangent.shape),
            _DTYPE_NAMES[cotangent.dtype],
        )
        return _GLU_PACKED_BWD([h, cotangent], launch)[0], None

    return fused


_GLU_PACKED_FUSED = {a: _make_glu_packed(a) for a in ("silu", "silu_mlx", "gelu", "gelu_approx")}


def swiglu_packed(h: mx.array, *, rounding: str = "fp32", differentiable: bool = True) -> mx.array:
    """`silu(gate) * up` for `h = [gate | up]` on the last axis: returns half the width.
    ``rounding`` and ``differentiable`` as in :func:`swiglu`."""
    act = _silu_act(rounding, "swiglu_packed")
    launch = _packed_launch(act, h, "swiglu_packed")
    if _backend.on_cuda():
        if differentiable:
            return _GLU_PACKED_FUSED[act](h, launch)
        return _GLU_PACKED([h], launch)[0]
    return ref.swiglu_packed(h, rounding)


def geglu_packed(
    h: mx.array, approximate: bool = False, *, differentiable: bool = True
) -> mx.array:
    """`gelu(gate) * up` for `h = [gate | up]` on the last axis: returns half the width.
    ``differentiable`` as in :func:`swiglu`."""
    act = "gelu_approx" if approximate else "gelu"
    launch = _packed_launch(act, h, "geglu_packed")
    if _backend.on_cuda():
        if differentiable:
            return _GLU_PACKED_FUSED[act](h, launch)
        return _GLU_PACKED([h], launch)[0]
    return ref.geglu_packed(h, approximate)


# ---------------------------------------------------------------------------------------
# Dropout


def _dropout_launch(x: mx.array, p: float) -> _Launch:
    return _DROPOUT.launch(
        (x.shape, x.dtype, p), list(x.shape), _DTYPE_NAMES[x.dtype], p, [2], "uint32"
    )


@mx.custom_function
def _dropout_fused(x: mx.array, key: mx.array, p: float) -> mx.array:
    return _DROPOUT([x, key], _dropout_launch(x, p))[0]


@_dropout_fused.vjp
def _dropout_vjp(primals, cotangent, output):
    _, key, p = primals
    # The mask is a function of (key, index): the same kernel on the cotangent is the vjp.
    return _DROPOUT([cotangent, key], _dropout_launch(cotangent, p))[0], mx.zeros_like(key), None


def dropout(x: mx.array, p: float, *, key: mx.array | None = None) -> mx.array:
    """Inverted dropout: zero each element with probability `p`, scale the rest by 1/(1-p).

    Deterministic for a given `key` (from `mx.random.key`); without one, a key is drawn from
    MLX's global random state, as `mlx.nn.Dropout` does. `p == 0` returns `x` itself. The mask
    for a key differs between the CUDA kernel and the MLX fallback. On MLX-CUDA a key straight
    from `mx.random.key` (8 bytes) lives in managed memory and slows the kernel (23 against
    13 us at 2048 x 4096 bf16 on an H100); the keys of `mx.random.split` do not.
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise _native.ZmlxError(f"dropout(): 'p' must be a float in [0, 1), got {p!r}")
    x_dtype = _dtype_name(x, "x", "dropout")
    if _native.check_dropout_p(float(p)):
        return x
    if key is not None:
        k_dtype = _dtype_name(key, "key", "dropout")
        k_shape = list(key.shape)
    else:  # a key's contract; the drawn key has 4 words, of which the kernel reads these 2
        k_dtype, k_shape = "uint32", [2]
    _DROPOUT.launch(
        (x.shape, x.dtype, float(p)), list(x.shape), x_dtype, float(p), k_shape, k_dtype
    )
    if not _backend.on_cuda():
        return ref.dropout(x, float(p), key)
    if key is None:
        key = _key_drawer()()
    return _dropout_fused(x, key, float(p))


def _draw_key() -> mx.array:
    # A Philox key from MLX's global random state (31 random bits per word), drawn as four
    # words of which the kernel reads the first two: MLX-CUDA keeps arrays of 8 bytes or less
    # in a pool of managed memory, and a key there cost the kernel ~10 us per call on an H100
    # (however few threads read it); a 16-byte array lives in device memory.
    return mx.random.randint(0, 2**31 - 1, (4,), dtype=mx.uint32)


@functools.cache
def _key_drawer() -> Callable[[], mx.array]:
    """`_draw_key` compiled with MLX's random state as its input and output: the same keys
    and the same state afterwards, in 6 graph nodes instead of 26 (randint's dozen small
    elementwise ops become one; on CPU 8 instead of 19 us to build, 25 instead of 113 to
    run). Built on first use: reading `mx.random.state` creates the state."""
    return mx.compile(_draw_key, inputs=mx.random.state, outputs=mx.random.state)


# ---------------------------------------------------------------------------------------
# MoE gating


_MODES = ("softmax", "topk_softmax", "sigmoid")


def _gating_launch(
    logits: mx.array,
    k: int,
    mode: str,
    norm_topk: bool,
    bias: mx.array | None,
    scale: float,
    ties: str,
    mlx: bool,
) -> _Launch:
    try:
        key: tuple = (
            logits.shape,
            logits.dtype,
            k,
            mode,
            norm_topk,
            None if bias is None else (bias.shape, bias.dtype),
            scale,
            ties,
            mlx,
        )
        got = _GATING._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    if isinstance(k, bool) or not isinstance(k, int):
        raise _native.ZmlxError(f"moe_gating(): 'k' must be an int, got {k!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise _native.ZmlxError(f"moe_gating(): 'scale' must be a float, got {scale!r}")
    if not isinstance(mode, str):
        raise _native.ZmlxError(f"moe_gating(): 'mode' must be one of {_MODES}, got {mode!r}")
    if not isinstance(ties, str):
        raise _native.ZmlxError(f"moe_gating(): 'ties' must be 'lower' or 'higher', got {ties!r}")
    l_dtype = _dtype_name(logits, "logits", "moe_gating")
    b_shape = b_dtype = None
    if bias is not None:
        b_dtype = _dtype_name(bias, "bias", "moe_gating")
        b_shape = list(bias.shape)
    return _GATING.launch(
        key,
        list(logits.shape),
        l_dtype,
        k,
        mode,
        bool(norm_topk),
        b_shape,
        b_dtype,
        float(scale),
        ties,
        mlx,
    )


@mx.custom_function
def _gating_fused(logits, bias, k, mode, norm_topk, scale, launch):
    return tuple(_GATING(_gating_inputs(logits, bias), launch))


def _gating_inputs(logits: mx.array, bias: mx.array | None) -> list[mx.array]:
    return [logits] if bias is None else [logits, bias]


@_gating_fused.vjp
def _gating_vjp(primals, cotangents, outputs):
    logits, bias, _, mode, norm_topk, scale, _ = primals
    indices = outputs[1]

    def scores_of(lg: mx.array) -> mx.array:
        return ref.moe_scores_for(lg, indices, mode=mode, norm_topk=norm_topk, scale=scale)

    _, (d_logits,) = mx.vjp(scores_of, [logits], [cotangents[0]])
    d_bias = None if bias is None else mx.zeros_like(bias)
    return d_logits, d_bias, None, None, None, None, None


def moe_gating(
    logits: mx.array,
    k: int,
    *,
    mode: str = "softmax",
    norm_topk: bool = True,
    bias: mx.array | None = None,
    scale: float = 1.0,
    ties: str = "lower",
    rounding: str = "fp32",
    differentiable: bool = True,
) -> tuple[mx.array, mx.array]:
    """Router logits (..., n_experts) -> (scores, indices), each (..., k), in one kernel.

    - ``mode="softmax"``: softmax over all experts (fp32, rounded to the logits' dtype), top-k,
      scores from the softmax, divided by their sum if ``norm_topk`` (qwen3_moe, qwen2_moe with
      ``norm_topk=False``, qwen3_next).
    - ``mode="topk_softmax"``: top-k on the logits, softmax over the k (mixtral, gpt_oss).
    - ``mode="sigmoid"``: fp32 sigmoid; ``bias`` (n_experts,) added for selection only; scores
      from the unbiased sigmoid, renormalised if ``norm_topk`` and k > 1 (glm4_moe,
      deepseek_v3 with n_group == 1). Scores are float32 in this mode.

    Every mode multiplies scores by ``scale``. Indices are uint32, ordered by descending
    selection score. ``ties`` says which expert index wins equal selection scores, as the
    family's mlx-lm line does on MLX-CUDA (a stable sort): ``"higher"`` for
    ``argpartition(g)[..., -k:]`` (qwen3_moe, qwen3_next, gpt_oss, granitemoe), ``"lower"`` for
    ``argpartition(-g)[..., :k]`` (mixtral, qwen2_moe, glm4_moe, deepseek_v3); without CUDA
    the MLX reference picks as MLX's own argpartition does there. Scores are differentiable in
    logits unless ``differentiable=False`` (see :func:`swiglu`).

    ``rounding="mlx"`` (``mode="softmax"``): the numbers and order of mlx-lm's own lines on
    MLX-CUDA, bit for bit up to 256 experts in half types (128 in fp32): MLX's softmax
    arithmetic, the picks in its argpartition's order (ascending for ``ties="higher"``), the
    renormalising sum in that order in the logits' dtype.
    """
    mlx = _mlx_rounding(rounding, "moe_gating")
    launch = _gating_launch(logits, k, mode, norm_topk, bias, scale, ties, mlx)
    if _backend.on_cuda():
        if not differentiable:
            scores, indices = _GATING(_gating_inputs(logits, bias), launch)
            return scores, indices
        scores, indices = _gating_fused(logits, bias, k, mode, norm_topk, scale, launch)
        return scores, mx.stop_gradient(indices)
    return ref.moe_gating(
        logits,
        k,
        mode=mode,
        norm_topk=norm_topk,
        bias=bias,
        scale=scale,
        ties=ties,
        rounding=rounding,
    )


# ---------------------------------------------------------------------------------------
# MoE combine


def _gather_add_launch(y: mx.array, scores: mx.array, mlx_rounding: bool) -> _Launch:
    try:
        key: tuple = (y.shape, y.dtype, scores.shape, scores.dtype, mlx_rounding)
        got = _GATHER_ADD._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    y_dtype = _dtype_name(y, "y", "gather_add")
    s_dtype = _dtype_name(scores, "scores", "gather_add")
    return _GATHER_ADD.launch(
        key, list(y.shape), y_dtype, list(scores.shape), s_dtype, mlx_rounding
    )


@mx.custom_function
def _gather_add_fused(y: mx.array, scores: mx.array, launch: _Launch) -> mx.array:
    return _GATHER_ADD([y, scores], launch)[0]


@_gather_add_fused.vjp
def _gather_add_vjp(primals, cotangent, output):
    y, scores, _ = primals
    c = cotangent.astype(mx.float32)[..., None, :]
    d_y = (c * scores.astype(mx.float32)[..., None]).astype(y.dtype)
    d_scores = (y.astype(mx.float32) * c).sum(axis=-1).astype(scores.dtype)
    return d_y, d_scores, None


def gather_add(
    y: mx.array, scores: mx.array, *, rounding: str = "fp32", differentiable: bool = True
) -> mx.array:
    """MoE combine: ``out[..., h] = sum_k y[..., k, h] * scores[..., k]``, fp32 accumulation,
    in y's dtype. ``scores`` has y's shape without the last axis. ``rounding="mlx"`` rounds as
    mlx-lm's ``(y * scores[..., None]).sum(axis=-2)`` does on MLX-CUDA: each product in the
    dtype MLX gives ``y * scores``, and half-type products summed in k order in their dtype
    (bit-identical there); ``differentiable`` as in :func:`swiglu`."""
    launch = _gather_add_launch(y, scores, _mlx_rounding(rounding, "gather_add"))
    if _backend.on_cuda():
        if differentiable:
            return _gather_add_fused(y, scores, launch)
        return _GATHER_ADD([y, scores], launch)[0]
    return ref.gather_add(y, scores, rounding)


# ---------------------------------------------------------------------------------------
# Quantised MoE experts at decode sizes


_QMV_SWIGLU = _Kernel(_native.plan_gather_qmv_swiglu)
_QMV_COMBINE = _Kernel(_native.plan_gather_qmv_combine)


def _array_spec(a: Any, arg: str, op: str) -> tuple[list[int], str]:
    dtype = _dtype_name(a, arg, op)
    return list(a.shape), dtype


def _require_ints(op: str, **values: Any) -> None:
    """Python ints (not bools) for the named arguments, before they reach a Rust plan."""
    for arg, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise _native.ZmlxError(f"{op}(): '{arg}' must be an int, got {v!r}")


def _qmv_swiglu_launch(x, indices, w, scales, biases, group_size, bits) -> _Launch:
    try:
        key: tuple = (
            x.shape,
            x.dtype,
            indices.shape,
            indices.dtype,
            w.shape,
            w.dtype,
            scales.shape,
            scales.dtype,
            biases.shape,
            biases.dtype,
            group_size,
            bits,
        )
        got = _QMV_SWIGLU._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    op = "gather_qmv_swiglu"
    _require_ints(op, group_size=group_size, bits=bits)
    arrays = {"x": x, "indices": indices, "w": w, "scales": scales, "biases": biases}
    return _QMV_SWIGLU.launch_for(key, op, arrays, bits, group_size)


def gather_qmv_swiglu(
    x: mx.array,
    indices: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int = 64,
    bits: int = 4,
) -> mx.array:
    """Quantised MoE up-projection + SwiGLU for small token counts, in one kernel.

    ``w`` (E, 2I, D * bits / 32), ``scales``/``biases`` (E, 2I, D / group_size) are the
    ``mx.quantize`` output of each expert's ``[gate | up]`` rows (gate first). For x (..., D)
    and indices (..., k) returns ``silu(gate) * up`` as (..., k, I) in x's dtype, fp32
    accumulation. 4- and 8-bit, group sizes 32/64/128. Inference only (no vjp); on other
    backends, ``mx.gather_qmm`` then SwiGLU. Out-of-range indices are clamped on CUDA.
    """
    launch = _qmv_swiglu_launch(x, indices, w, scales, biases, group_size, bits)
    if _backend.on_cuda():
        return _QMV_SWIGLU([x, indices, w, scales, biases], launch)[0]
    return ref.gather_qmv_swiglu(x, indices, w, scales, biases, group_size=group_size, bits=bits)


def _qmv_combine_launch(act, indices, scores, w, scales, biases, group_size, bits) -> _Launch:
    try:
        key: tuple = (
            act.shape,
            act.dtype,
            indices.shape,
            indices.dtype,
            scores.shape,
            scores.dtype,
            w.shape,
            w.dtype,
            scales.shape,
            scales.dtype,
            biases.shape,
            biases.dtype,
            group_size,
            bits,
        )
        got = _QMV_COMBINE._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    op = "gather_qmv_combine"
    _require_ints(op, group_size=group_size, bits=bits)
    arrays = {"act": act, "indices": indices, "scores": scores, "w": w}
    arrays |= {"scales": scales, "biases": biases}
    return _QMV_COMBINE.launch_for(key, op, arrays, bits, group_size)


def gather_qmv_combine(
    act: mx.array,
    indices: mx.array,
    scores: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int = 64,
    bits: int = 4,
) -> mx.array:
    """Quantised MoE down-projection + weighted combine for small token counts, one kernel.

    ``out[..., d] = sum_k scores[..., k] * (act[..., k, :] . down[indices[..., k], d, :])``
    with act (..., k, I), ``w`` (E, D, I * bits / 32) and its scales/biases as
    ``mx.quantize`` lays them out; fp32 accumulation, (..., D) in act's dtype. Inference only;
    on other backends, ``mx.gather_qmm`` then the combine.
    """
    launch = _qmv_combine_launch(act, indices, scores, w, scales, biases, group_size, bits)
    if _backend.on_cuda():
        return _QMV_COMBINE([act, indices, scores, w, scales, biases], launch)[0]
    return ref.gather_qmv_combine(
        act, indices, scores, w, scales, biases, group_size=group_size, bits=bits
    )


_QMV = _Kernel(_native.plan_qmv)


def _qmv_launch(x, w, scales, biases, group_size, bits) -> _Launch:
    try:
        key: tuple = (
            x.shape,
            x.dtype,
            w.shape,
            w.dtype,
            scales.shape,
            scales.dtype,
            biases.shape,
            biases.dtype,
            group_size,
            bits,
        )
        got = _QMV._launches.get(key)
    except (AttributeError, TypeError):
        key, got = (), None
    if got is not None:
        return got
    op = "qmv"
    _require_ints(op, group_size=group_size, bits=bits)
    arrays = {"x": x, "w": w, "scales": scales, "biases": biases}
    return _QMV.launch_for(key, op, arrays, bits, group_size)


def qmv(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int = 64,
    bits: int = 4,
) -> mx.array:
    """``x @ dequantize(w).T`` for a few rows of x, as ``mx.quantized_matmul(x, w, scales,
    biases, transpose=True, ...)`` computes it, in one faster kernel.

    4-bit affine weights (``mx.quantize`` output: ``w`` (N, K / 8) uint32, ``scales`` and
    ``biases`` (N, K / group_size)) in x's dtype, float16 or bfloat16; group sizes 32/64/128.
    For one row of x the result is bit for bit MLX-CUDA's (its qmv kernel's arithmetic, which
    MLX runs up to 16384 outputs and inputs). Inference only (no vjp); on other backends,
    ``mx.quantized_matmul``. Meant for decode: every row of x re-reads the weights.
    """
    launch = _qmv_launch(x, w, scales, biases, group_size, bits)
    if _backend.on_cuda():
        return _QMV([x, w, scales, biases], launch)[0]
    return ref.qmv(x, w, scales, biases, group_size=group_size, bits=bits)


_ADD_RMS_NORM = _Kernel(_native.plan_add_rms_norm)


def add_rms_norm(
    x: mx.array, r: mx.array, weight: mx.array, eps: float = 1e-5
) -> tuple[mx.array, mx.array]:
    """``h = x + r`` and ``mx.fast.rms_norm(h, weight, eps)`` in one node: returns (h, normed).

    x and r (..., D) of one float dtype, weight (D,) of that dtype, D up to 8192 (4096 in
    float32). On MLX-CUDA one kernel with MLX's own arithmetic for both ops (bit for bit
    where MLX runs its one-block-per-row RMSNorm, which covers these sizes); elsewhere the
    two MLX ops. Inference only (no vjp).
    """
    try:
        key: tuple = (x.shape, x.dtype, r.shape, r.dtype, weight.shape, weight.dtype, eps)
        launch = _ADD_RMS_NORM._launches.get(key)
    except (AttributeError, TypeError):
        key, launch = (), None
    if launch is None:
        op = "add_rms_norm"
        if isinstance(eps, bool) or not isinstance(eps, int | float):
            raise _native.ZmlxError(f"{op}(): 'eps' must be a number, got {eps!r}")
        arrays = {"x": x, "r": r, "weight": weight}
        launch = _ADD_RMS_NORM.launch_for(key, op, arrays, eps)
    if _backend.on_cuda():
        h, out = _ADD_RMS_NORM([x, r, weight], launch)
        return h, out
    return ref.add_rms_norm(x, r, weight, eps)


_QK_RMS_NORM = _Kernel(_native.plan_qk_rms_norm)


def qk_rms_norm(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    eps: tuple[float, float],
    n_heads: int,
    n_kv_heads: int,
) -> tuple[mx.array, mx.array, mx.array]:
    """qwen3's attention front in one node: from a q|k|v projection (..., (n_heads +
    n_kv_heads) * D + n_kv_heads * DV), q (..., n_heads, D) and k (..., n_kv_heads, D)
    RMS-normalised per head with their weights (D,) and eps (q's, k's), and v (...,
    n_kv_heads, DV). One float dtype throughout; D up to 32 * 16 / itemsize. On MLX-CUDA one
    kernel with MLX's RMSNorm arithmetic; elsewhere split, reshapes and ``mx.fast.rms_norm``.
    Inference only (no vjp).
    """
    try:
        key: tuple = (qkv.shape, qkv.dtype, q_weight.shape, q_weight.dtype, k_weight.shape)
        key += (k_weight.dtype, eps, n_heads, n_kv_heads)
        launch = _QK_RMS_NORM._launches.get(key)
    except (AttributeError, TypeError):
        key, launch = (), None
    if launch is None:
        op = "qk_rms_norm"
        if not (isinstance(eps, tuple) and len(eps) == 2):
            raise _native.ZmlxError(f"{op}(): 'eps' must be a (q, k) pair of numbers, got {eps!r}")
        _require_ints(op, n_heads=n_heads, n_kv_heads=n_kv_heads)
        arrays = {"qkv": qkv, "q_weight": q_weight, "k_weight": k_weight}
        launch = _QK_RMS_NORM.launch_for(key, op, arrays, eps, n_heads, n_kv_heads)
    if _backend.on_cuda():
        q, k, v = _QK_RMS_NORM([qkv, q_weight, k_weight], launch)
        return q, k, v
    return ref.qk_rms_norm(qkv, q_weight, k_weight, eps, n_heads, n_kv_heads)


_QKV_ROPE = _Kernel(_native.plan_qkv_rope)
# The last int offset and its int32 array, one tuple (read and replaced whole, so threads
# never pair one offset with another's array): a decode step's layers all ask for the same.
_LAST_OFFSET: tuple[int | None, mx.array | None] = (None, None)


def _require_rope(op: str, base: Any, scale: Any, traditional: Any) -> None:
    """nn.RoPE's settings as the rope plans take them: numbers and a bool."""
    for arg, v in (("base", base), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _native.ZmlxError(f"{op}(): '{arg}' must be a number, got {v!r}")
    if not isinstance(traditional, bool):
        raise _native.ZmlxError(f"{op}(): 'traditional' must be a bool, got {traditional!r}")


def offset_array(op: str, offset: int | mx.array) -> mx.array:
    """A rope kernel's `offset` as the int32 array it reads (one array per int offset,
    reused while the offset stays); `op` names the caller in errors."""
    global _LAST_OFFSET
    last, array = _LAST_OFFSET
    # A decode step's layers all ask for the same int: one check, no validation again.
    if type(offset) is int and offset == last and array is not None:
        return array
    if isinstance(offset, mx.array):
        # Another integer type (a batch cache's offsets) as the kernels read it; floats are
        # left for the plan to reject.
        if offset.dtype != mx.int32 and mx.issubdtype(offset.dtype, mx.integer):
            return offset.astype(mx.int32)
        return offset
    _require_ints(op, offset=offset)
    array = mx.array(offset, dtype=mx.int32)
    _LAST_OFFSET = (offset, array)
    return array


def qkv_rope(
    qkv: mx.array,
    offset: int | mx.array,
    *,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    base: float,
    scale: float = 1.0,
    traditional: bool = False,
) -> tuple[mx.array, mx.array, mx.array]:
    """llama/mistral attention's front at one decode token, in one node: from a q|k|v
    projection (B, 1, (n_heads + n_kv_heads) * head_dim + n_kv_heads * DV), q (B, n_heads, 1,
    head_dim) and k (B, n_kv_heads, 1, head_dim) rotated as ``mx.fast.rope(x, head_dim,
    traditional=traditional, base=base, scale=scale, offset=offset)`` does, and v (B,
    n_kv_heads, 1, DV). ``offset``: an int, or an int32 array () or (B,) (one position per
    row). On MLX-CUDA one kernel with MLX's rope arithmetic; elsewhere split, reshapes,
    transposes and ``mx.fast.rope``. Inference only (no vjp).
    """
    op = "qkv_rope"
    off = offset_array(op, offset)
    try:
        key: tuple = (qkv.shape, qkv.dtype, off.shape, off.dtype, n_heads, n_kv_heads)
        key += (head_dim, base, scale, traditional)
        launch = _QKV_ROPE._launches.get(key)
    except (AttributeError, TypeError):
        key, launch = (), None
    if launch is None:
        _require_ints(op, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim)
        _require_rope(op, base, scale, traditional)
        arrays = {"qkv": qkv, "offset": off}
        scalars = (n_heads, n_kv_heads, head_dim, float(base), float(scale), traditional)
        launch = _QKV_ROPE.launch_for(key, op, arrays, *scalars)
    if _backend.on_cuda():
        q, k, v = _QKV_ROPE([qkv, off], launch)
        return q, k, v
    return ref.qkv_rope(
        qkv,
        off,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        base=base,
        scale=scale,
        traditional=traditional,
    )


_QK_NORM_ROPE = _Kernel(_native.plan_qk_norm_rope)


def qk_norm_rope(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    eps: tuple[float, float],
    offset: int | mx.array,
    *,
    n_heads: int,
    n_kv_heads: int,
    base: float,
    scale: float = 1.0,
    traditional: bool = False,
) -> tuple[mx.array, mx.array, mx.array]:
    """qwen3 attention's front at one decode token, in one node: ``qk_rms_norm`` (q and k
    RMS-normalised per head with their weights (D,) and eps (q's, k's)), then q and k
    rotated as ``mx.fast.rope(x, D, traditional=traditional, base=base, scale=scale,
    offset=offset)`` does; qkv (B, 1, (n_heads + n_kv_heads) * D + n_kv_heads * DV) ->
    q (B, n_heads, 1, D), k (B, n_kv_heads, 1, D), v (B, n_kv_heads, 1, DV). On MLX-CUDA one
    kernel with MLX's RMSNorm and rope arithmetic; elsewhere the MLX ops. Inference only.
    """
    op = "qk_norm_rope"
    off = offset_array(op, offset)
    try:
        key: tuple = (qkv.shape, qkv.dtype, q_weight.shape, q_weight.dtype, k_weight.shape)
        key += (k_weight.dtype, off.shape, off.dtype, eps, n_heads, n_kv_heads)
        key += (base, scale, traditional)
        launch = _QK_NORM_ROPE._launches.get(key)
    except (AttributeError, TypeError):
        key, launch = (), None
    if launch is None:
        if not (isinstance(eps, tuple) and len(eps) == 2):
            raise _native.ZmlxError(f"{op}(): 'eps' must be a (q, k) pair of numbers, got {eps!r}")
        _require_ints(op, n_heads=n_heads, n_kv_heads=n_kv_heads)
        _require_rope(op, base, scale, traditional)
        arrays = {"qkv": qkv, "q_weight": q_weight, "k_weight": k_weight, "offset": off}
        head_dim = q_weight.shape[0] if q_weight.ndim == 1 else -1
        scalars = (eps, n_heads, n_kv_heads, head_dim, float(base), float(scale), traditional)
        launch = _QK_NORM_ROPE.launch_for(key, op, arrays, *scalars)
    if _backend.on_cuda():
        q, k, v = _QK_NORM_ROPE([qkv, q_weight, k_weight, off], launch)
        return q, k, v
    return ref.qk_norm_rope(
        qkv,
        q_weight,
        k_weight,
        eps,
        off,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        base=base,
        scale=scale,
        traditional=traditional,
    )
