"""Residual add + RMSNorm: a decoder block's `h = x + r` and `post_attention_layernorm(h)`
become one `kernels.add_rms_norm` node (two outputs), and so do its closing `h + r` and the
next block's `input_layernorm`: two graph nodes fewer per block (one for the last).

Which blocks qualify is read from their `__call__`: its body must be, statement for
statement, mlx-lm's pre-norm block (llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, ...):

    r = self.self_attn(self.input_layernorm(x), mask, cache)
    h = x + r
    r = self.<mlp>(self.post_attention_layernorm(h))
    out = h + r
    return out

with `post_attention_layernorm` an `nn.RMSNorm` of a width the kernel takes. Consecutive
patched blocks of one layer list are linked (`finish`): a block hands the next one its
output together with that output already normalised by the next block's `input_layernorm`,
and the next block uses it only if its input is that very array (the model's loop passes
it straight on); anything else, and training mode, runs the plain ops. The kernel
computes both ops as MLX-CUDA does (bit for bit where MLX runs its one-block-per-row RMSNorm);
in training mode the block runs the two MLX ops (the kernel has no vjp).
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from zmlx_rs import _native, kernels
from zmlx_rs.patterns._base import OK, DecodeGraph, Fused, Pattern, decode_graph

__all__ = ["AddNorm", "FusedAddNormBlock"]

_TEMPLATE = """
r = self.self_attn(self.input_layernorm(x), mask, cache)
h = x + r
r = self.{mlp}(self.post_attention_layernorm(h))
out = h + r
return out
"""
_MLP_ATTRS = ("mlp", "block_sparse_moe", "feed_forward")
_FORMS = {
    ast.dump(ast.parse(_TEMPLATE.format(mlp=attr)), annotate_fields=False): attr
    for attr in _MLP_ATTRS
}
_CHILDREN = ("self_attn", "input_layernorm", "post_attention_layernorm")


@functools.cache
def _mlp_attr(cls: type) -> str | None:
    """The MLP attribute of a block whose forward is the pre-norm form, else None."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__call__)))
    except (OSError, TypeError, SyntaxError):
        return None
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef):
        return None
    if [a.arg for a in func.args.args] != ["self", "x", "mask", "cache"]:
        return None
    body = [
        s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    return _FORMS.get(ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False))


def _takes(norm: nn.Module) -> str | None:
    """Why the kernel cannot stand in for `norm`, or None."""
    if type(norm) is not nn.RMSNorm or "weight" not in norm:
        return f"a {type(norm).__name__}, not nn.RMSNorm"
    weight = norm["weight"]
    if weight.ndim != 1:
        return f"weight of shape {weight.shape}, not (D,)"
    # The planner knows which rows and dtypes the kernel takes.
    d, dtype = weight.shape[0], str(weight.dtype).split(".")[-1]
    try:
        _native.plan_add_rms_norm(([1, d], dtype), ([1, d], dtype), ([d], dtype), norm.eps)
    except _native.ZmlxError as e:
        return str(e)
    return None


class FusedAddNormBlock(Fused):
    """The block with `h = x + r; n = post_attention_layernorm(h)` as one kernel."""

    pattern = "add_norm"

    def __init__(self, original: nn.Module, mlp_attr: str) -> None:
        super().__init__(original)
        for name in (*_CHILDREN, mlp_attr):
            self[name] = original[name]
        # Plain settings the model's loop may read (use_sliding, args, ...).
        for name, value in vars(original).items():
            if not name.startswith("_") and not isinstance(value, mx.array | nn.Module):
                setattr(self, name, value)
        object.__setattr__(self, "mlp_attr", mlp_attr)
        # The next block of the same layer list, once `AddNorm.finish` links it.
        object.__setattr__(self, "next_block", None)
        self.note = f"x + r, post_attention_layernorm -> add_rms_norm; {mlp_attr}"

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        handed = self.__dict__.pop("_handed", None)
        # Children by item, not attribute: nn.Module's __getattr__ is a Python call per
        # lookup, and a decode step makes thousands of them.
        if handed is not None and handed[0] is x:
            normed_x = handed[1]
        else:
            normed_x = self["input_layernorm"](x)
        r = self["self_attn"](normed_x, mask, cache)
        norm = self["post_attention_layernorm"]
        # The kernel wants one dtype for the stream, the branch and the norm's weight (mlx-lm
        # models keep them so); anything else, and training, runs MLX's ops.
        if self.training or not x.dtype == r.dtype == norm["weight"].dtype:
            h = x + r
            return h + self[self.mlp_attr](norm(h))
        graph = self._tail_graph(x)
        outs = self.tail(x, r) if graph is None else graph(x, r)
        if len(outs) == 2:
            self.next_block.__dict__["_handed"] = outs
        return outs[0]

    def tail(self, x: mx.array, r: mx.array) -> tuple[mx.array, ...]:
        """The block after attention: the add and post-attention norm (one kernel), the MLP,
        and its closing add; with a linked next block, that add and the next block's input
        norm (one kernel), as (out, normed out); else (out,)."""
        norm = self["post_attention_layernorm"]
        h, normed = kernels.add_rms_norm(x, r, norm["weight"], norm.eps)
        r = self[self.mlp_attr](normed)
        following = self.next_block
        if following is None:
            return (h + r,)
        norm = following["input_layernorm"]
        weight = norm["weight"]
        if not h.dtype == r.dtype == weight.dtype:
            return (h + r,)
        return kernels.add_rms_norm(h, r, weight, norm.eps)

    def _tail_graph(self, x: mx.array) -> DecodeGraph | None:
        """`tail` as one compiled call (see DecodeGraph) where the MLP runs as a decode
        graph itself (it says which modules it reads: `graph_modules`); else None."""
        graph_modules = getattr(self[self.mlp_attr], "graph_modules", None)
        modules = None if graph_modules is None else graph_modules(x)
        if modules is not None:
            norms = (self["post_attention_layernorm"],)
            if self.next_block is not None:
                norms += (self.next_block["input_layernorm"],)
            modules = (*norms, *modules)
        return decode_graph(self, "tail", modules, args=2)


class AddNorm(Pattern):
    name = "add_norm"
    description = "residual add + post-attention RMSNorm in one kernel"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused):
            return None
        mlp = _mlp_attr(type(module))
        if mlp is None:
            return None
        missing = [a for a in (*_CHILDREN, mlp) if not isinstance(module.get(a), nn.Module)]
        if missing:
            return f"missing submodules {missing}"
        why = _takes(module["post_attention_layernorm"])
        return OK if why is None else f"post_attention_layernorm: {why}"

    def apply(self, module: nn.Module, path: str) -> Fused:
        mlp = _mlp_attr(type(module))
        assert mlp is not None
        return FusedAddNormBlock(module, mlp)

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedAddNormBlock)
        return fused.hand_back_children([*_CHILDREN, fused.mlp_attr])

    def finish(self, model: nn.Module) -> None:
        """Links each patched block to the next entry of its layer list when that is one too
        and its `input_layernorm` is an RMSNorm the kernel takes."""
        lists: dict[str, dict[int, FusedAddNormBlock]] = {}
        for path, module in model.named_modules():
            parent, _, index = path.rpartition(".")
            if isinstance(module, FusedAddNormBlock) and index.isdigit():
                object.__setattr__(module, "next_block", None)
                lists.setdefault(parent, {})[int(index)] = module
        for blocks in lists.values():
            for i, block in blocks.items():
                following = blocks.get(i + 1)
                if following is not None and _takes(following["input_layernorm"]) is None:
                    object.__setattr__(block, "next_block", following)
