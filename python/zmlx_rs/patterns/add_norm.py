"""Residual add + RMSNorm: a decoder block's `h = x + r` and `post_attention_layernorm(h)`
become one `kernels.add_rms_norm` node (two outputs), one graph node fewer per block.

Which blocks qualify is read from their `__call__`: its body must be, statement for
statement, mlx-lm's pre-norm block (llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, ...):

    r = self.self_attn(self.input_layernorm(x), mask, cache)
    h = x + r
    r = self.<mlp>(self.post_attention_layernorm(h))
    out = h + r
    return out

with `post_attention_layernorm` an `nn.RMSNorm` of a width the kernel takes. The kernel
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
from zmlx_rs.patterns._base import OK, Fused, Pattern

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
_MAX_ROW = {mx.float32: 4096, mx.float16: 8192, mx.bfloat16: 8192}


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
        self.note = f"x + r, post_attention_layernorm -> add_rms_norm; {mlp_attr}"

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        r = self.self_attn(self.input_layernorm(x), mask, cache)
        norm = self.post_attention_layernorm
        if self.training:
            h = x + r
            normed = norm(h)
        else:
            h, normed = kernels.add_rms_norm(x, r, norm.weight, norm.eps)
        return h + self[self.mlp_attr](normed)


class AddNorm(Pattern):
    name = "add_norm"
    description = "residual add + post-attention RMSNorm in one kernel"
    # Not yet checked bit for bit against MLX on a GPU (the emulation tests hold it to MLX's
    # arithmetic as read from MLX's source): on when a GPU run has.
    by_default = False

    def matches(self, module: nn.Module, path: str) -> str | None:
        if isinstance(module, Fused):
            return None
        mlp = _mlp_attr(type(module))
        if mlp is None:
            return None
        missing = [a for a in (*_CHILDREN, mlp) if not isinstance(module.get(a), nn.Module)]
        if missing:
            return f"missing submodules {missing}"
        norm = module["post_attention_layernorm"]
        if type(norm) is not nn.RMSNorm or "weight" not in norm:
            return f"post_attention_layernorm is a {type(norm).__name__}, not nn.RMSNorm"
        weight = norm["weight"]
        if weight.ndim != 1 or weight.shape[0] > _MAX_ROW.get(weight.dtype, 0):
            return f"RMSNorm weight {weight.shape} {weight.dtype}: wider than the kernel takes"
        d, dtype = weight.shape[0], str(weight.dtype).split(".")[-1]
        try:
            _native.plan_add_rms_norm(([1, d], dtype), ([1, d], dtype), ([d], dtype), norm.eps)
        except _native.ZmlxError as e:
            return str(e)
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        mlp = _mlp_attr(type(module))
        assert mlp is not None
        return FusedAddNormBlock(module, mlp)

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedAddNormBlock)
        return fused.hand_back_children([*_CHILDREN, fused.mlp_attr])
