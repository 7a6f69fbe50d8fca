"""Mixture-of-experts blocks, in two patterns that compose:

- `moe_experts`: a `SwitchGLU` whose gate and up expert stacks become one (quantized or not)
  switch layer: one gather_(q)mm + `swiglu_packed` instead of two + SwiGLU, on both the
  per-token path and the sorted prefill path (`indices.size >= 64`).
- `moe_block`: the block around it (qwen3_moe, qwen2_moe, qwen3_next, mixtral, glm4_moe,
  deepseek_v3): routing in one `moe_gating` kernel and the weighted sum in one `gather_add`,
  shared experts and the tensor-parallel `sharding_group` all-sum kept as mlx-lm has them;
  gpt_oss too (its clamped-SwiGLU experts stay unfused).

`FusedMoEBlock.experts_and_combine` and `FusedSwitchGLU.gathered_forward` are the seams a
decode-specialised pattern overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import sum_gradients
from mlx_lm.models import deepseek_v3, glm4_moe, gpt_oss, mixtral, qwen2_moe, qwen3_moe, qwen3_next
from mlx_lm.models.switch_layers import SwiGLU, SwitchGLU, _gather_sort, _scatter_unsort

from zmlx_rs import kernels
from zmlx_rs.errors import ZmlxError
from zmlx_rs.patterns._base import (
    OK,
    SWITCH_LINEARS,
    Fused,
    Pattern,
    fuse_outputs,
    linear_mismatch,
    unfuse_outputs,
)

__all__ = ["FusedMoEBlock", "FusedSwitchGLU", "MoEBlock", "MoEExperts"]

# Tokens x top-k at which SwitchGLU sorts tokens by expert (mlx-lm's threshold).
SORT_THRESHOLD = 64


class FusedSwitchGLU(Fused):
    """SwitchGLU with gate|up experts in one switch layer."""

    pattern = "moe_experts"

    def __init__(self, original: SwitchGLU, gate_up_proj: nn.Module, widths: list[int]) -> None:
        super().__init__(original)
        self.gate_up_proj = gate_up_proj
        self.holds_stack("gate_up_proj")
        self.down_proj = original.down_proj
        object.__setattr__(self, "widths", tuple(widths))
        self.note = "gate|up experts -> gate_up_proj"

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        x = mx.expand_dims(x, (-2, -3))
        indices = mx.stop_gradient(indices)
        if indices.size < SORT_THRESHOLD:
            return self.gathered_forward(x, indices).squeeze(-2)
        # Prefill: group tokens by expert so each expert's rows are read once.
        x, sorted_indices, inverse = _gather_sort(x, indices)
        y = self.gathered_forward(x, sorted_indices, sorted_indices=True)
        return _scatter_unsort(y, inverse, indices.shape).squeeze(-2)

    def gathered_forward(
        self, x: mx.array, indices: mx.array, sorted_indices: bool = False
    ) -> mx.array:
        h = self["gate_up_proj"](x, indices, sorted_indices=sorted_indices)
        a = kernels.swiglu_packed(h, rounding="mlx", differentiable=self.training)
        return self["down_proj"](a, indices, sorted_indices=sorted_indices)


class MoEExperts(Pattern):
    name = "moe_experts"
    description = "MoE experts: gate|up in one gather matmul + fused SwiGLU"

    def matches(self, module: nn.Module, path: str) -> str | None:
        if type(module) is not SwitchGLU:
            return None
        if type(module.activation) is not SwiGLU:
            return (
                f"activation {type(module.activation).__name__} is not SwiGLU "
                "(swiglu_packed computes silu(gate) * up only)"
            )
        return linear_mismatch([module.gate_proj, module.up_proj], SWITCH_LINEARS) or OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        gate_up, widths = fuse_outputs([module.gate_proj, module.up_proj])
        return FusedSwitchGLU(module, gate_up, widths)

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedSwitchGLU)
        original = fused.original
        unfuse_outputs(fused.gate_up_proj, [original.gate_proj, original.up_proj], fused.widths)
        return fused.hand_back_children(["down_proj"])


@dataclass(frozen=True)
class Routing:
    """How a family picks experts: `moe_gating` arguments, or the block's own router when
    the kernel cannot express it (group-limited selection)."""

    k: int
    mode: str = "softmax"
    norm_topk: bool = False
    scale: float = 1.0
    # Which index mlx-lm's argpartition keeps on a tie on MLX-CUDA (see kernels.moe_gating).
    ties: str = "lower"
    router_is_weight: bool = False  # glm4_moe / deepseek_v3: logits = x @ gate.weight.T
    use_module_router: bool = False
    gated_shared_expert: bool = False  # qwen2_moe / qwen3_next: sigmoid(gate(x)) * expert(x)
    router: str = "gate"  # child names; gpt_oss says router / experts
    experts: str = "switch_mlp"

    def describe(self) -> str:
        if self.use_module_router:
            return f"top-{self.k}, mlx-lm router (group-limited)"
        return f"top-{self.k} {self.mode}{' norm' if self.norm_topk else ''}"


def _softmax_routing(block: nn.Module) -> Routing:
    return Routing(
        k=block.top_k,
        norm_topk=bool(getattr(block, "norm_topk_prob", False)),
        gated_shared_expert="shared_expert" in block,
        # qwen3_moe / qwen3_next: argpartition(gates)[..., -k:]; qwen2_moe negates the gates.
        ties="lower" if isinstance(block, qwen2_moe.Qwen2MoeSparseMoeBlock) else "higher",
    )


def _sigmoid_routing(block: nn.Module) -> Routing:
    gate = block.gate
    return Routing(
        k=gate.top_k,
        mode="sigmoid",
        norm_topk=bool(gate.norm_topk_prob),
        scale=float(gate.routed_scaling_factor),
        router_is_weight=True,
        use_module_router=(gate.n_group or 1) > 1,
    )


_ROUTING = {
    qwen3_moe.Qwen3MoeSparseMoeBlock: _softmax_routing,
    qwen2_moe.Qwen2MoeSparseMoeBlock: _softmax_routing,
    qwen3_next.Qwen3NextSparseMoeBlock: _softmax_routing,
    mixtral.MixtralSparseMoeBlock: lambda b: Routing(k=b.num_experts_per_tok, mode="topk_softmax"),
    glm4_moe.MoE: _sigmoid_routing,
    deepseek_v3.DeepseekV3MoE: _sigmoid_routing,
    # Its experts' clamped SwiGLU stays as is (moe_experts skips it); routing and combine fuse.
    gpt_oss.MLPBlock: lambda b: Routing(
        k=b.num_experts_per_tok,
        mode="topk_softmax",
        ties="higher",
        router="router",
        experts="experts",
    ),
}
_CHILDREN = (
    "gate",
    "router",
    "switch_mlp",
    "experts",
    "shared_expert",
    "shared_expert_gate",
    "shared_experts",
)


class FusedMoEBlock(Fused):
    """An MoE block with fused routing and combine; children are the original's own."""

    pattern = "moe_block"

    def __init__(self, original: nn.Module, routing: Routing) -> None:
        super().__init__(original)
        for name in _CHILDREN:
            if name in original:
                setattr(self, name, original[name])
        object.__setattr__(self, "routing", routing)
        self.sharding_group = getattr(original, "sharding_group", None)
        self.note = routing.describe()

    def __call__(self, x: mx.array) -> mx.array:
        group = self.sharding_group
        if group is not None:
            x = sum_gradients(group)(x)
        scores, indices = self.route(x)
        y = self.experts_and_combine(x, indices, scores)
        y = self.add_shared_experts(x, y)
        if group is not None:
            y = mx.distributed.all_sum(y, group=group)
        return y

    def route(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(scores, indices), each (..., k)."""
        r = self.routing
        if r.use_module_router:
            indices, scores = self[r.router](x)
            return scores, indices
        if r.router_is_weight:
            gate = self["gate"]
            return kernels.moe_gating(
                x @ gate["weight"].T,
                r.k,
                mode=r.mode,
                norm_topk=r.norm_topk,
                bias=gate["e_score_correction_bias"],
                scale=r.scale,
                ties=r.ties,
                rounding="mlx",
                differentiable=self.training,
            )
        return kernels.moe_gating(
            self[r.router](x),
            r.k,
            mode=r.mode,
            norm_topk=r.norm_topk,
            ties=r.ties,
            rounding="mlx",
            differentiable=self.training,
        )

    def experts_and_combine(self, x: mx.array, indices: mx.array, scores: mx.array) -> mx.array:
        """Sum of the picked experts' outputs weighted by their scores."""
        y = self[self.routing.experts](x, indices)
        return kernels.gather_add(y, scores, rounding="mlx", differentiable=self.training)

    def add_shared_experts(self, x: mx.array, y: mx.array) -> mx.array:
        if "shared_experts" in self:
            return y + self["shared_experts"](x)
        if "shared_expert" in self:
            gate = self["shared_expert_gate"]
            return y + mx.sigmoid(gate(x)) * self["shared_expert"](x)
        return y


class MoEBlock(Pattern):
    """`fused_class` lets a specialised block (a FusedMoEBlock subclass, e.g. with a decode
    kernel in `experts_and_combine`) take this pattern's place in the registry."""

    name = "moe_block"
    description = "MoE block: fused gating (moe_gating) + fused combine (gather_add)"

    def __init__(self, fused_class: type[FusedMoEBlock] = FusedMoEBlock) -> None:
        self.fused_class = fused_class

    def matches(self, module: nn.Module, path: str) -> str | None:
        kind = type(module)
        if kind not in _ROUTING:
            return None
        routing = _ROUTING[kind](module)
        n_experts = _n_experts(module[routing.experts])
        if not 0 < routing.k <= n_experts:
            return f"top-k {routing.k} not in 1..{n_experts}"
        if routing.gated_shared_expert and "shared_expert_gate" not in module:
            return "shared expert without its gate"
        if not routing.use_module_router:
            # The kernel's limits (experts, k) are checked when it is planned: plan it now
            # (lazily, nothing runs) rather than fail on the first forward.
            bias = mx.zeros((n_experts,)) if routing.router_is_weight else None
            try:
                kernels.moe_gating(
                    mx.zeros((1, n_experts)),
                    routing.k,
                    mode=routing.mode,
                    norm_topk=routing.norm_topk,
                    bias=bias,
                    scale=routing.scale,
                )
            except ZmlxError as e:
                return f"moe_gating cannot route it: {e}"
        return OK

    def apply(self, module: nn.Module, path: str) -> Fused:
        return self.fused_class(module, _ROUTING[type(module)](module))

    def revert(self, fused: Fused) -> nn.Module:
        assert isinstance(fused, FusedMoEBlock)
        original = fused.hand_back_children(_CHILDREN)
        if fused.sharding_group is not None:
            original.sharding_group = fused.sharding_group
        return original


def _n_experts(experts: nn.Module) -> int:
    proj = experts.down_proj if "down_proj" in experts else experts.gate_up_proj
    return int(proj["weight"].shape[0])
