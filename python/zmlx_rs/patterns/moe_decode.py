"""MoE decode: the `moe_block` rewrite plus, at decode sizes on MLX-CUDA, the experts as two
quantised kernels: `gather_qmv_swiglu` (gate|up + SwiGLU) and `gather_qmv_combine` (down +
weighted sum). A decode step's MoE block is then four nodes: router matmul, `moe_gating` and
the two kernels. Prefill (tokens * k > 64) keeps the `moe_block` path and mlx-lm's sorted
gather_qmm, as do experts the kernels cannot take.

The kernels need gate|up packed into one matrix: that is the `moe_experts` pattern, applied to
the block's `switch_mlp` after this one (registry order); without it this pattern is
`moe_block`. It comes before `moe_block` in the registry and takes the blocks whose experts
the kernels can run (SwiGLU, affine 4/8-bit, group 32/64/128, no biases): the default for
quantised MoE models, measured 1.40x decode against `moe_block`'s 1.14x on a Qwen3-30B-A3B-
shaped 4-bit model (H100, benchmarks/results/moe_decode.json). Other blocks are `moe_block`'s;
`exclude=["moe_decode"]` keeps `moe_block` everywhere.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

from zmlx_rs import _backend, kernels
from zmlx_rs.patterns._base import OK, decode_graph, decode_graphs_on
from zmlx_rs.patterns.moe import _ROUTING, FusedMoEBlock, FusedSwitchGLU, MoEBlock, MoEExperts

__all__ = ["DECODE_MAX_PAIRS", "FusedMoEDecodeBlock", "MoEDecode"]

# The kernels read each selected expert once per (token, k) pair; past this many pairs the
# sorted gather_qmm, which reads an expert once for all its tokens, wins.
DECODE_MAX_PAIRS = 64
# The experts' packing (gate|up into one stack) is moe_experts' job: ask it.
_MOE_EXPERTS = MoEExperts()


def _kernel_weights(proj: nn.Module) -> bool:
    """Whether the kernels read this expert stack: affine 4/8-bit, group 32/64/128, no bias."""
    return (
        type(proj) is QuantizedSwitchLinear
        and getattr(proj, "mode", "affine") == "affine"
        and proj.get("biases") is not None
        and "bias" not in proj
        and getattr(proj, "global_scale", None) is None
        and proj.bits in (4, 8)
        and proj.group_size in (32, 64, 128)
    )


def _kernel_experts(mlp: nn.Module) -> bool:
    """Whether the kernels take these experts: packed gate|up and down they can read."""
    return isinstance(mlp, FusedSwitchGLU) and all(
        _kernel_weights(p) for p in (mlp.gate_up_proj, mlp.down_proj)
    )


def _packable_experts(mlp: nn.Module) -> bool:
    """Whether `moe_experts` will pack these (unpatched) experts into ones the kernels take."""
    return _MOE_EXPERTS.matches(mlp, "") == OK and all(
        _kernel_weights(p) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    )


class FusedMoEDecodeBlock(FusedMoEBlock):
    """`FusedMoEBlock` whose experts run as two kernels at decode sizes, in eval mode."""

    pattern = "moe_decode"

    def __init__(self, original: nn.Module, routing) -> None:
        super().__init__(original, routing)
        # Which experts module was last checked: it may be swapped after patching.
        object.__setattr__(self, "_checked", (None, False))
        self.note = routing.describe() + ", decode experts in 2 kernels"

    def __call__(self, x: mx.array) -> mx.array:
        graph = decode_graph(self, "decode", self.graph_modules(x))
        return super().__call__(x) if graph is None else graph(x)

    def graph_modules(self, x: mx.array) -> tuple[nn.Module, ...] | None:
        """The modules a decode graph of `decode` (router matmul, `moe_gating`, the two
        kernels) reads for input `x`: with decode graphs on, at decode sizes in eval mode on
        MLX-CUDA, for a block without shared experts or sharding and with a plain or weight
        router; else None."""
        r = self.routing
        if (
            not decode_graphs_on(self)
            or self.sharding_group is not None
            or self.training
            or r.use_module_router
            or x.ndim == 0
            or x.shape[-1] == 0
            or x.size // x.shape[-1] * r.k > DECODE_MAX_PAIRS
            or not _backend.on_cuda()
            or "shared_experts" in self
            or "shared_expert" in self
        ):
            return None
        router, mlp = self[r.router], self[r.experts]
        if not (r.router_is_weight or type(router) in (nn.Linear, nn.QuantizedLinear)):
            return None
        if not self._kernels_take(mlp):
            return None
        return (router, mlp, mlp["gate_up_proj"], mlp["down_proj"])

    def decode(self, x: mx.array) -> mx.array:
        """The routed experts' weighted sum, op by op (what the graph traces)."""
        scores, indices = self.route(x)
        return self.experts_and_combine(x, indices, scores)

    def _kernels_take(self, mlp: nn.Module) -> bool:
        checked, ok = self.__dict__["_checked"]
        if checked is not mlp:
            ok = _kernel_experts(mlp)
            object.__setattr__(self, "_checked", (mlp, ok))
        return ok

    def experts_and_combine(self, x: mx.array, indices: mx.array, scores: mx.array) -> mx.array:
        mlp = self[self.routing.experts]
        ok = self._kernels_take(mlp)
        # The kernels have no vjp: training keeps the differentiable path.
        if not ok or self.training or indices.size > DECODE_MAX_PAIRS or not _backend.on_cuda():
            return super().experts_and_combine(x, indices, scores)
        gu, down = mlp["gate_up_proj"], mlp["down_proj"]
        act = kernels.gather_qmv_swiglu(
            x,
            indices,
            gu["weight"],
            gu["scales"],
            gu["biases"],
            group_size=gu.group_size,
            bits=gu.bits,
        )
        return kernels.gather_qmv_combine(
            act,
            indices,
            scores,
            down["weight"],
            down["scales"],
            down["biases"],
            group_size=down.group_size,
            bits=down.bits,
        )


class MoEDecode(MoEBlock):
    """`moe_block` with `FusedMoEDecodeBlock`, under its own name."""

    name = "moe_decode"
    # A MoE decode step is bound by the host's cost per node even patched, and graphs cut
    # that cost: H100, Qwen3-30B-A3B 1.086x [1.068, 1.130], Mixtral-8x7B 0.990x [0.975,
    # 1.061] (decode_graphs-20261207-125645/125836.json). A dense step can be GPU-bound,
    # where they lost (Mistral-7B 0.940x): there smart_patch measures them.
    graphs_by_default = True
    description = (
        "MoE block: moe_block + decode-size quantised experts in 2 kernels "
        "(gather_qmv_swiglu, gather_qmv_combine)"
    )

    def __init__(self) -> None:
        super().__init__(fused_class=FusedMoEDecodeBlock)

    def matches(self, module: nn.Module, path: str) -> str | None:
        # Blocks whose experts the kernels cannot take are left to `moe_block` (None: not
        # this pattern's), so the two never both claim a block.
        kind = type(module)
        if kind not in _ROUTING or not _packable_experts(module[_ROUTING[kind](module).experts]):
            return None
        return super().matches(module, path)
