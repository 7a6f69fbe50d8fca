"""End-to-end greedy decode of a Qwen3-30B-A3B-shaped model (random weights, 4-bit, group 64,
bf16): tokens/s unpatched vs patched in interleaved rounds (A B B A ...), greedy tokens compared
step by step, and graph nodes per decode step and per MoE block. Writes
benchmarks/results/moe_decode.json.

Random weights keep the run offline; the shapes, quantisation and graph are the real model's.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import zmlx_rs
from mlx_lm.generate import generate_step
from mlx_lm.models import cache as cache_lib
from mlx_lm.models import qwen3_moe
from zmlx_rs import _backend
from zmlx_rs.synthetic import SHAPES

QWEN3_30B_A3B = SHAPES["qwen3-30b-a3b"].config
VIEWS = {"Reshape", "Squeeze", "ExpandDims", "Broadcast", "Slice", "Transpose", "AsStrided"}


def build(layers: int, bits: int, group_size: int) -> nn.Module:
    """The model with random weights, quantised one layer at a time to bound peak memory."""
    mx.random.seed(0)
    args = qwen3_moe.ModelArgs.from_dict({**QWEN3_30B_A3B, "num_hidden_layers": layers})
    model = qwen3_moe.Model(args)
    for layer in model.model.layers:
        layer.set_dtype(mx.bfloat16)
        nn.quantize(layer, group_size=group_size, bits=bits)
        mx.eval(layer.parameters())
    model.set_dtype(mx.bfloat16)
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        class_predicate=lambda _, m: isinstance(m, (nn.Linear, nn.Embedding)),
    )
    mx.eval(model.parameters())
    return model.eval()  # as mlx_lm.load returns it: the patterns' inference paths


def nodes(*outputs: mx.array) -> Counter:
    """Primitive nodes of the graph that computes `outputs`, by primitive name."""
    f = io.StringIO()
    mx.export_to_dot(f, *outputs)
    return Counter(re.findall(r'label ="([A-Za-z_0-9]+)', f.getvalue()))


def graph_counts(model: nn.Module, prompt: mx.array) -> dict:
    cache = cache_lib.make_prompt_cache(model)
    mx.eval(model(prompt[None], cache=cache))
    step = nodes(model(prompt[None, -1:], cache=cache))
    x = mx.random.normal((1, 1, QWEN3_30B_A3B["hidden_size"])).astype(mx.bfloat16)
    mx.eval(x)
    block = nodes(model.model.layers[0].mlp(x))
    views = lambda c: sum(n for k, n in c.items() if k in VIEWS)  # noqa: E731
    return {
        "step_nodes": sum(step.values()),
        "step_views": views(step),
        "moe_block_nodes": sum(block.values()),
        "moe_block_views": views(block),
        "moe_block": dict(block),
    }


def decode(model: nn.Module, prompt: mx.array, steps: int) -> tuple[list[int], float]:
    """Greedy tokens and decode tokens/s (prefill and the first token excluded)."""
    tokens = []
    t0 = 0.0
    for n, (tok, _) in enumerate(generate_step(prompt, model, max_tokens=steps + 1)):
        tokens.append(int(tok))
        if n == 0:
            t0 = time.perf_counter()
    return tokens, steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each variant")
    p.add_argument("--out", default="benchmarks/results/moe_decode.json")
    args = p.parse_args()
    t_build = time.perf_counter()
    model = build(args.layers, 4, 64)
    t_build = time.perf_counter() - t_build
    prompt = mx.array([151643, 872, 3555, 374, 279, 6722, 315, 9625, 30, 220, 785, 6722])
    variants = {  # zmlx_rs.patch arguments
        "unpatched": None,
        "moe_block": {"patterns": ["moe_block", "moe_experts"]},
        "moe_decode": {"patterns": ["moe_decode", "moe_experts"]},
        "default": {},  # patch(model): every pattern, moe_decode for these blocks
    }

    def use(name: str) -> None:
        zmlx_rs.unpatch(model)
        kwargs = variants[name]
        if kwargs is not None:
            zmlx_rs.patch(model, **kwargs)

    graphs = {}
    for name in variants:
        use(name)
        graphs[name] = graph_counts(model, prompt)
        decode(model, prompt, 4)  # warm-up: JIT of every kernel on this path
    order = []
    for r in range(args.rounds):
        names = list(variants)
        order += names if r % 2 == 0 else names[::-1]
    tps: dict[str, list[float]] = {n: [] for n in variants}
    tokens: dict[str, list[list[int]]] = {n: [] for n in variants}
    for name in order:
        use(name)
        toks, rate = decode(model, prompt, args.steps)
        tps[name].append(rate)
        tokens[name].append(toks)
    ref_tokens = tokens["unpatched"][0]

    def first_diff(t: list[int]) -> int | None:
        return next((i for i, (a, b) in enumerate(zip(t, ref_tokens, strict=True)) if a != b), None)

    result = {
        "backend": _backend.name(),
        "device": str(mx.device_info().get("device_name", "")),
        "layers": args.layers,
        "steps": args.steps,
        "build_s": t_build,
        "order": order,
        "variants": {
            n: {
                "tokens_per_s": tps[n],
                "median_tokens_per_s": statistics.median(tps[n]),
                "speedup_vs_unpatched": statistics.median(
                    [a / b for a, b in zip(tps[n], tps["unpatched"], strict=True)]
                ),
                "tokens_identical": all(t == ref_tokens for t in tokens[n]),
                "first_token_diff": [first_diff(t) for t in tokens[n]],
                **graphs[n],
            }
            for n in variants
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['device']}: {args.layers} layers, {args.steps} greedy steps, {order}")
    print(f"{'variant':<12}{'tok/s':>8}{'x':>7}{'same':>6}{'nodes/step':>12}{'nodes/MoE':>11}")
    for n, v in result["variants"].items():
        print(
            f"{n:<12}{v['median_tokens_per_s']:>8.1f}{v['speedup_vs_unpatched']:>7.2f}"
            f"{'yes' if v['tokens_identical'] else 'no':>6}{v['step_nodes']:>12}"
            f"{v['moe_block_nodes']:>11}"
        )


if __name__ == "__main__":
    main()
