"""What every pattern shares: the Pattern interface, the Fused module base that remembers the
module it replaced, and weight concatenation that replaces (never duplicates) the originals."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import AllToShardedLinear, QuantizedAllToShardedLinear
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

from zmlx_rs.errors import ZmlxError

__all__ = [
    "OK",
    "DecodeGraph",
    "Fused",
    "Pattern",
    "decode_graph",
    "decode_graphs_on",
    "fuse_outputs",
    "graphs_built",
    "linear_mismatch",
    "unfuse_outputs",
    "use_decode_graphs",
]

OK = "ok"
"""What `Pattern.matches` returns for a module it can patch; any other string is a reason
to skip it, None means the module is not a candidate at all."""

# Layers computing `x @ W.T (+ b)` whose arrays may be cut along the output axis: stacking two
# of them along that axis is one layer of the same class (TP all-to-sharded ones included,
# since each rank's shard is cut the same way).
DENSE_LINEARS: tuple[type, ...] = (
    nn.Linear,
    nn.QuantizedLinear,
    AllToShardedLinear,
    QuantizedAllToShardedLinear,
)
SWITCH_LINEARS: tuple[type, ...] = (SwitchLinear, QuantizedSwitchLinear)
# The output axis of each array a linear layer may hold.
_OUTPUT_AXIS = {"weight": -2, "scales": -2, "biases": -2, "bias": -1}
_CONFIG_ATTRS = ("group_size", "bits", "mode", "group")


class Pattern:
    """One rewrite: which modules it fits (`matches`), how to swap one in (`apply`) and back
    (`revert`). The Fused modules `apply` returns carry the pattern's `name`."""

    name: str = ""
    description: str = ""
    # Whether `patch()` without `patterns` tries it (smart_patch always measures it).
    by_default: bool = True
    # Whether `patch()` turns decode graphs on for a model it fused (unless told otherwise):
    # for patterns whose patched decode step stays bound by the host's cost per node.
    graphs_by_default: bool = False

    def matches(self, module: nn.Module, path: str) -> str | None:
        """`OK` if `apply` can patch `module`, a reason if it is a candidate that cannot be
        patched, None if it is not a candidate."""
        raise NotImplementedError

    def apply(self, module: nn.Module, path: str) -> Fused:
        """Build the fused replacement; moves (never copies) the original's weights."""
        raise NotImplementedError

    def revert(self, fused: Fused) -> nn.Module:
        """Give back the original module with its original weights, bitwise."""
        raise NotImplementedError

    def finish(self, model: nn.Module) -> None:
        """Called by `patch()` once this pattern has been applied everywhere it goes: for
        links between the fused modules (nothing by default)."""

    def __repr__(self) -> str:
        return f"<pattern {self.name}>"


class Fused(nn.Module):
    """Base of every fused module. The replaced module is kept outside the parameter tree
    (so it is neither trained, saved, nor counted twice) and `pattern` names the rewrite."""

    pattern: str = ""
    # Whether this module replays its decode forward as one compiled call (DecodeGraph)
    # where it can: `patch` sets it on a model's fused modules (asked, or by default for a
    # model with a moe_decode block on MLX-CUDA).
    decode_graphs: bool = False

    def __init__(self, original: nn.Module) -> None:
        # Not super(): a fused module may also derive from the layer class it stands in for
        # (qmv's FusedQuantizedLinear), whose constructor makes weights.
        nn.Module.__init__(self)
        object.__setattr__(self, "_original", original)
        self.note = ""

    @property
    def original(self) -> nn.Module:
        return self.__dict__["_original"]

    def holds_stack(self, name: str) -> None:
        """Child `name` holds weights stacked from the original's layers: `unpatch` cuts
        them back out, so it must still be the layer that was made here."""
        self.__dict__.setdefault("_stacks", {})[name] = self[name]

    def revert_blocker(self) -> str | None:
        """Why this module cannot be reverted, or None."""
        for name, layer in self.__dict__.get("_stacks", {}).items():
            held = self.get(name)
            # Another pattern may wrap the stack (qmv): unpatch reverts that one first.
            while isinstance(held, Fused) and held is not layer:
                held = held.original
            if held is not layer:
                return (
                    f"'{name}' was replaced by a {type(self.get(name)).__name__} after patching "
                    "(LoRA?): fuse or remove it first"
                )
        return None

    def hand_back_children(self, names: Sequence[str]) -> nn.Module:
        """Put children the fused module shares with the original back on it: they may have
        been swapped since patching (LoRA, a nested pattern), and that swap must survive."""
        original = self.original
        for name in names:
            if name in self:
                setattr(original, name, self[name])
        return original


class DecodeGraph:
    """A fused module's inference forward replayed as one `mx.compile`d call.

    On MLX-CUDA a decode step is bound by the CPU: every op costs Python and MLX time to
    build and encode, and a kernel call through its own compiled function costs more than a
    built-in op. Traced once per input shape, the forward's ops (matmuls, catalog kernels)
    replay from one call with the weights as explicit inputs: the same primitives in the same
    order, so the same numbers. `method` takes `args` arrays (what varies per call) and returns
    an array or a tuple of them; it must be pure in those and the arrays of `modules` (read at
    each call, so reassigned weights are used) and must not hold elementwise MLX ops the
    compiler could fuse. `fits` says whether the graph was built for these `modules` (the same
    objects with the same keys); build a new one when not.

    The graph holds its owner weakly (no cycle through the compiled function), and while a
    trace runs it puts tracers in the modules' places, restoring the arrays even if the
    forward raises.
    """

    __slots__ = ("_args", "_fn", "_method", "_modules", "_sizes", "_slots")

    def __init__(
        self, owner: nn.Module, method: str, modules: Sequence[nn.Module], args: int = 1
    ) -> None:
        self._method = method
        self._args = args
        self._modules = tuple(modules)
        self._sizes = tuple(len(m) for m in modules)
        self._slots = [(m, k) for m in modules for k, v in m.items() if isinstance(v, mx.array)]
        slots, ref = self._slots, weakref.ref(owner)

        def trace(*arrays: mx.array) -> Any:
            saved = [m[k] for m, k in slots]
            try:
                for (m, k), a in zip(slots, arrays[args:], strict=True):
                    m[k] = a
                return getattr(ref(), method)(*arrays[:args])
            finally:
                for (m, k), a in zip(slots, saved, strict=True):
                    m[k] = a

        self._fn = mx.compile(trace)

    def fits(self, method: str, modules: Sequence[nn.Module], args: int = 1) -> bool:
        return (
            method == self._method
            and args == self._args
            and len(modules) == len(self._modules)
            and all(a is b for a, b in zip(modules, self._modules, strict=True))
            and all(len(m) == n for m, n in zip(modules, self._sizes, strict=True))
        )

    def __call__(self, *xs: mx.array) -> Any:
        return self._fn(*xs, *[m[k] for m, k in self._slots])


# Off process-wide: bit for bit on the GPU, but a gain only where the host bounds decode
# (measured both ways on an H100). Per model, `patch` turns them on for MoE decode (and when
# asked), smart_patch where its measurement says so; `use_decode_graphs(True)` for every model.
_DECODE_GRAPHS = [False]


def use_decode_graphs(enabled: bool) -> None:
    """Whether fused modules (moe_decode, dense_mlp, add_norm, qkv_rope, qk_norm_rope)
    replay their decode forward as one compiled call (`DecodeGraph`) on MLX-CUDA; off by
    default. Process-wide, for every patched model (`patch(model, decode_graphs=True)` is
    per model); takes effect at the next call."""
    if not isinstance(enabled, bool):
        raise ZmlxError(f"use_decode_graphs(): 'enabled' must be a bool, got {enabled!r}")
    _DECODE_GRAPHS[0] = enabled


def decode_graphs_on(module: Fused | None = None) -> bool:
    """Whether decode graphs are on: for every fused module (`use_decode_graphs`), or for
    `module` (patched with `decode_graphs=True`)."""
    return _DECODE_GRAPHS[0] or (module is not None and module.decode_graphs)


def decode_graph(
    owner: Fused, method: str, modules: Sequence[nn.Module] | None, args: int = 1
) -> DecodeGraph | None:
    """The owner's `DecodeGraph` of `method` (taking `args` arrays) for `modules`, built on
    first use and whenever they change; None for no modules (the caller's finder said this
    call runs op by op: decode graphs off, training, prefill, ...)."""
    if modules is None:
        return None
    graph = owner.__dict__.get("_decode_graph")
    if graph is None or not graph.fits(method, modules, args):
        graph = DecodeGraph(owner, method, modules, args)
        object.__setattr__(owner, "_decode_graph", graph)
    return graph


def graphs_built(model: nn.Module) -> int:
    """How many modules of `model` have built their `DecodeGraph` (by running a decode step
    with decode graphs on)."""
    return sum("_decode_graph" in m.__dict__ for _, m in model.named_modules())


def linear_mismatch(layers: Sequence[nn.Module], kinds: tuple[type, ...]) -> str | None:
    """Why `layers` cannot be stacked along their output axis, or None if they can."""
    first = layers[0]
    if "weight" not in first:
        return "layer has no weight"
    if type(first) not in kinds:
        return f"{type(first).__name__} is not one of {', '.join(k.__name__ for k in kinds)}"
    for layer in layers[1:]:
        if type(layer) is not type(first):
            return f"mixed layer types {type(first).__name__} and {type(layer).__name__}"
        if set(layer.keys()) != set(first.keys()):
            return "layers differ in their arrays (bias or quantization)"
        for attr in _CONFIG_ATTRS:
            if getattr(layer, attr, None) != getattr(first, attr, None):
                return f"layers differ in {attr}"
        for key in first:
            a, b = first[key], layer[key]
            if not isinstance(a, mx.array) or a.dtype != b.dtype:
                return f"'{key}' differs in type or dtype"
            axis = _OUTPUT_AXIS.get(key)
            if axis is None:
                return f"unknown array '{key}'"
            if _without_axis(a.shape, axis) != _without_axis(b.shape, axis):
                return f"'{key}' shapes {a.shape} and {b.shape} differ off the output axis"
    if getattr(first, "global_scale", None) is not None:
        return "per-matrix global scales (nvfp4) cannot be stacked"
    return None


def _without_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1 :]


def fuse_outputs(layers: Sequence[nn.Module]) -> tuple[nn.Module, list[int]]:
    """One layer whose outputs are the `layers`' outputs side by side, and the split widths.

    The stacked arrays are evaluated, then the originals' arrays are dropped from them, so
    the weights live once. `unfuse_outputs` gives them back.
    """
    fused = copy.copy(layers[0])
    # A shallow copy would share the frozen-set; the fused layer needs its own.
    object.__setattr__(fused, "_no_grad", set(layers[0]._no_grad))
    widths = [layer["weight"].shape[-2] for layer in layers]
    # Which outputs each original layer owns: patterns that care about the originals' widths
    # (qmv keeps to the widths MLX runs its qmv kernel at) read it.
    object.__setattr__(fused, "stacked_widths", tuple(widths))
    keys = list(layers[0].keys())
    for key in keys:
        fused[key] = mx.concatenate([layer[key] for layer in layers], axis=_OUTPUT_AXIS[key])
    mx.eval([fused[key] for key in keys])
    for layer in layers:
        for key in keys:
            del layer[key]
    return fused, widths


def unfuse_outputs(fused: nn.Module, layers: Sequence[nn.Module], widths: Sequence[int]) -> None:
    """Give `layers` back their arrays, cut from `fused`: the same bits they had, each in a
    row-contiguous buffer of its own, so the stack is freed right here and the layout is the
    never-patched one. (`take` along a middle axis returns a transposed view of its gather:
    MLX-CUDA's gather_qmm has no kernel for expert stacks laid out like that.)"""
    start = 0
    keys = list(fused.keys())
    for layer, width in zip(layers, widths, strict=True):
        rows = mx.arange(start, start + width)
        for key in keys:
            layer[key] = mx.contiguous(mx.take(fused[key], rows, axis=_OUTPUT_AXIS[key]))
        mx.eval([layer[key] for key in keys])
        start += width
    for key in keys:
        del fused[key]
