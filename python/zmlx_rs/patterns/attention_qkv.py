"""Attention q/k/v projections as one projection plus a split.

The fused forward below restates mlx-lm's llama attention forward (with q/k RMS norms: the
qwen3 one). A class is patched only if its `__call__` is that same code, compared as a
syntax tree (comments, annotations and the spelling of the head counts aside): llama and
mistral (mapped to llama), mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, gemma, granite, ...
Three matmul nodes become one matmul and three slices.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama, qwen3
from mlx_lm.models.base import scaled_dot_product_attention

from zmlx_rs import _backend, kernels
from zmlx_rs.patterns._base import (
    DENSE_LINEARS,
    OK,
    DecodeGraph,
    Fused,
    Pattern,
    decode_graph,
    decode_graphs_on,
    fuse_outputs,
    linear_mismatch,
    unfuse_outputs,
)
from zmlx_rs.patterns.qmv import GRAPH_LINEARS, same_dtype_out

__all__ = ["AttentionQKV", "FusedQKVAttention", "attend", "attend_rotated"]

_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
# Spellings of the head counts (mixtral says num_heads / num_key_value_heads): the same
# forward under another attribute name.
_HEAD_ALIASES = {
    "n_heads": ("n_heads", "num_heads", "num_attention_heads"),
    "n_kv_heads": ("n_kv_heads", "num_key_value_heads", "num_kv_heads"),
}
_CANONICAL = {alias: name for name, aliases in _HEAD_ALIASES.items() for alias in aliases}


class _CanonicalHeads(ast.NodeTransformer):
    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = _CANONICAL.get(node.attr, node.attr)
        return self.generic_visit(node)


def _forward_tree(cls: type) -> str | None:
    try:
        func = ast.parse(textwrap.dedent(inspect.getsource(cls.__call__))).body[0]
    except (OSError, TypeError, SyntaxError):
        return None
    if not isinstance(func, ast.FunctionDef):
        return None
    func.name, func.returns = "forward", None
    for arg in func.args.args + func.args.kwonlyargs:
        arg.annotation = None
    func.body = [
        s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    return ast.dump(_CanonicalHeads().visit(func), annotate_fields=False)


# Reference forward -> whether it RMS-normalises q and k per head.
_REFERENCE_FORWARDS = {
    _forward_tree(llama.Attention): False,
    _forward_tree(qwen3.Attention): True,
}


@functools.cache
def _qk_norm(cls: type) -> bool | None:
    """Whether `cls` runs the qwen3 (True) or llama (False) forward; None: neither."""
    return _REFERENCE_FORWARDS.get(_forward_tree(cls))


def _head_count(module: nn.Module, name: str) -> int | None:
    """The head count under any of its spellings; None if absent or spelled two ways with
    two values (then which one the forward reads is not known)."""
    values = {getattr(module, a) for a in _HEAD_ALIASES[name] if hasattr(module, a)}
    return values.pop() if len(values) == 1 else None


class FusedQKVAttention(Fused):
    """The llama/qwen attention forward with q, k and v from one `qkv_proj`."""

    pattern = "attention_qkv"

    def __init__(self, original: nn.Module, qkv_proj: nn.Module, widths: list[int]) -> None:
        super().__init__(original)
        self.qkv_proj = qkv_proj
        self.holds_stack("qkv_proj")
        self.o_proj = original.o_proj
        self.rope = original.rope
        self.qk_norm = bool(_qk_norm(type(original)))
        if self.qk_norm:
            self.q_norm = original.q_norm
            self.k_norm = original.k_norm
        self.n_heads = _head_count(original, "n_heads")
        self.n_kv_heads = _head_count(original, "n_kv_heads")
        self.scale = original.scale
        # Plain attributes, not tree leaves: nn.Module would file lists under its parameters.
        object.__setattr__(self, "widths", tuple(widths))
        object.__setattr__(self, "split_at", [widths[0], widths[0] + widths[1]])
        self.note = "q|k|v -> qkv_proj"

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        offset = 0 if cache is None else cache.offset
        graph = self._front_graph(x)
        if graph is not None:
            q, k, v = graph(x, kernels.offset_array(self.pattern, offset))
            return attend_rotated(self, q, k, v, mask, cache)
        qkv = self["qkv_proj"](x)
        if not self.training and qkv.shape[1] == 1:
            front = self.decode_front(qkv, offset)
            if front is not None:
                return attend_rotated(self, *front, mask, cache)
        return attend(self, *self.heads(qkv), mask, cache)

    def fuses_front(self, dtype: mx.Dtype) -> bool:
        """Whether `decode_front` runs a kernel for a projection output of `dtype` (here:
        never)."""
        return False

    def _front_graph(self, x: mx.array) -> DecodeGraph | None:
        """At one token per row in eval mode on MLX-CUDA, the projection and `decode_front`'s
        kernel as one compiled call (see DecodeGraph), where the front is a kernel; else
        None."""
        if (
            not decode_graphs_on(self)
            or self.training
            or x.ndim != 3
            or x.shape[1] != 1
            or not _backend.on_cuda()
        ):
            return None
        proj = self["qkv_proj"]
        if type(proj) not in GRAPH_LINEARS or not same_dtype_out(proj, x.dtype):
            return None
        if not self.fuses_front(x.dtype):
            return None
        norms = (self["q_norm"], self["k_norm"]) if self.qk_norm else ()
        return decode_graph(self, "graph_front", (proj, *norms), args=2)

    def graph_front(self, x: mx.array, offset: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """What the front graph traces: the projection, then `decode_front`."""
        front = self.decode_front(self["qkv_proj"](x), offset)
        assert front is not None  # fuses_front said so
        return front

    def decode_front(
        self, qkv: mx.array, offset: int | mx.array
    ) -> tuple[mx.array, mx.array, mx.array] | None:
        """At one token per row in eval mode, q and k after RoPE at `offset` and v as (B,
        heads, 1, D) from one kernel; None (here: always) runs `heads` and `attend`."""
        return None

    def heads(self, qkv: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k (normalised if the forward does) and v as (B, L, heads, D)."""
        B, L, _ = qkv.shape
        queries, keys, values = mx.split(qkv, self.split_at, axis=-1)
        queries = queries.reshape(B, L, self.n_heads, -1)
        keys = keys.reshape(B, L, self.n_kv_heads, -1)
        if self.qk_norm:
            queries = self["q_norm"](queries)
            keys = self["k_norm"](keys)
        return queries, keys, values.reshape(B, L, self.n_kv_heads, -1)


def attend(
    module: nn.Module, queries: mx.array, keys: mx.array, values: mx.array, mask: Any, cache: Any
) -> mx.array:
    """The rest of the llama/qwen3 forward from (B, L, heads, D) q, k, v: RoPE, the KV cache,
    attention, the output projection (`module.rope`, `.scale`, `.o_proj`)."""
    queries = queries.transpose(0, 2, 1, 3)
    keys = keys.transpose(0, 2, 1, 3)
    values = values.transpose(0, 2, 1, 3)
    rope = module["rope"]
    if cache is not None:
        queries = rope(queries, offset=cache.offset)
        keys = rope(keys, offset=cache.offset)
    else:
        queries = rope(queries)
        keys = rope(keys)
    return attend_rotated(module, queries, keys, values, mask, cache)


def attend_rotated(
    module: nn.Module, queries: mx.array, keys: mx.array, values: mx.array, mask: Any, cache: Any
) -> mx.array:
    """The end of the forward from (B, heads, L, D) q and k after RoPE and v: the KV cache,
    attention, the output projection (`module.scale`, `.o_proj`)."""
    B, _, L, _ = queries.shape
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    output = scaled_dot_product_attention(
        queries, keys, values, cache=cache, scale=module.scale, mask=mask
    )
    output = output.transpose(0, 2, 1, 3).reshape(B, L, -1)
    return module["o_proj"](output)


class AttentionQKV(Pattern):
    name = "attention_qkv"
    description = "attention: q|k|v in one projection + split"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused):
            return None
        if not all(isinstance(module.get(p), nn.Module) for p in _PROJECTIONS):
            return None
        qk_norm = _qk_norm(type(module))
        if qk_norm is None:
            return f"{type(module).__name__}.__call__ is not the llama/qwen3 attention forward"
        needed = ["o_proj", "rope"] + (["q_norm", "k_norm"] if qk_norm else [])
        missing = [a for a in needed if a not in module]
        missing += [a for a in _HEAD_ALIASES if _head_count(module, a) is None]
        missing += [] if hasattr(module, "scale") else ["scale"]
        if missing:
            return f"missing attributes {missing}"
        return linear_mismatch([module[p] for p in _PROJECTIONS], DENSE_LINEARS) or OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        qkv, widths = fuse_outputs([module[p] for p in _PROJECTIONS])
        return FusedQKVAttention(module, qkv, widths)

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedQKVAttention)
        original = fused.original
        unfuse_outputs(fused.qkv_proj, [original[p] for p in _PROJECTIONS], fused.widths)
        names = ["o_proj", "rope"] + (["q_norm", "k_norm"] if fused.qk_norm else [])
        return fused.hand_back_children(names)
