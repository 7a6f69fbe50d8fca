"""The patch patterns, one file each. A pattern is a small object: `name`, `matches(module,
path)` (OK / a reason to skip / None), `apply` and `revert`; `patch()` walks a model with
every registered pattern in `ALL` order (outer blocks before the modules inside them)."""

from __future__ import annotations

from zmlx_rs.errors import ZmlxError
from zmlx_rs.patterns._base import OK, Fused, Pattern, decode_graphs_on, use_decode_graphs
from zmlx_rs.patterns.add_norm import AddNorm
from zmlx_rs.patterns.attention_qkv import AttentionQKV
from zmlx_rs.patterns.dense_mlp import DenseMLP
from zmlx_rs.patterns.moe import MoEBlock, MoEExperts
from zmlx_rs.patterns.moe_decode import MoEDecode
from zmlx_rs.patterns.qk_norm import QKNorm
from zmlx_rs.patterns.qk_norm_rope import QKNormRope
from zmlx_rs.patterns.qkv_rope import QKVRope
from zmlx_rs.patterns.qmv import QMV

__all__ = [
    "ALL",
    "OK",
    "Fused",
    "Pattern",
    "decode_graphs_on",
    "get",
    "names",
    "register",
    "use_decode_graphs",
]

# add_norm first: it takes the decoder blocks, outside everything else. Then moe_decode: it
# takes the MoE blocks with quantised experts its kernels run (measured faster than moe_block
# on the GPU), moe_block the others; moe_experts after both (it packs the experts inside the
# block); qk_norm_rope, qk_norm and qkv_rope before attention_qkv (they do what that one does
# and more, on qwen3's and llama's attention; qk_norm_rope more than qk_norm); qmv last, so
# that it also takes the stacked projections the others make.
ALL: list[Pattern] = [
    AddNorm(),
    MoEDecode(),
    MoEBlock(),
    MoEExperts(),
    QKNormRope(),
    QKNorm(),
    QKVRope(),
    AttentionQKV(),
    DenseMLP(),
    QMV(),
]


def names() -> list[str]:
    return [p.name for p in ALL]


def get(name: str) -> Pattern:
    for pattern in ALL:
        if pattern.name == name:
            return pattern
    raise ZmlxError(f"unknown pattern {name!r}: expected one of {names()}")


def register(pattern: Pattern, *, before: str | None = None) -> None:
    """Add a pattern, before the named one if given (else last); one of the same name is
    replaced in its place."""
    same = [i for i, p in enumerate(ALL) if p.name == pattern.name]
    if same and before is None:
        ALL[same[0]] = pattern
        return
    ALL[:] = [p for p in ALL if p.name != pattern.name]
    ALL.insert(len(ALL) if before is None else ALL.index(get(before)), pattern)
