"""Module-level A/B of each patch pattern at real model dimensions (random weights, 4-bit,
bf16): one mlx-lm module against the same module patched, decode (1 token) and prefill.

Reports graph nodes per call (from `mx.export_to_dot`) and per-call build / eval time in
interleaved rounds; the ratio patched / unpatched per round (median, min, max). End-to-end
decode speed is benchmarks/e2e.py's job; this isolates what each pattern does.

    python benchmarks/patch_modules.py [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama, qwen3_moe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zmlx_rs
from common import device_name, interleaved, median, ratio_stats, table, write_json
from zmlx_rs.synthetic import SHAPES

DT = mx.bfloat16

# One layer of each real config: the modules are what this benchmark times.
QWEN3_30B = {**SHAPES["qwen3-30b-a3b"].config, "num_hidden_layers": 1}
MISTRAL_7B = {**SHAPES["mistral-7b"].config, "model_type": "llama", "num_hidden_layers": 1}


def cases() -> list[tuple[str, str, Callable[[], nn.Module], int]]:
    """(case, pattern, module factory, hidden size)."""
    q = qwen3_moe.ModelArgs.from_dict(QWEN3_30B)
    m = llama.ModelArgs.from_dict(MISTRAL_7B)
    return [
        (
            "qwen3-30b-a3b moe block",
            "moe_block+moe_experts",
            lambda: qwen3_moe.Qwen3MoeSparseMoeBlock(q),
            2048,
        ),
        ("qwen3-30b-a3b attention", "attention_qkv", lambda: qwen3_moe.Attention(q, 0), 2048),
        ("mistral-7b mlp", "dense_mlp", lambda: llama.MLP(m), 4096),
        ("mistral-7b attention", "attention_qkv", lambda: llama.Attention(m), 4096),
    ]


def _router_8bit(path: str, module: nn.Module) -> bool | dict:
    """As the Qwen3 MoE checkpoints have it: the router in 8 bits, the rest in 4."""
    if not hasattr(module, "to_quantized"):
        return False
    return {"group_size": 64, "bits": 8} if path == "gate" else True


def twin(factory: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    """Two copies of one random 4-bit bf16 module; the second is patched."""
    mx.random.seed(0)
    plain = factory()
    nn.quantize(plain, group_size=64, bits=4, class_predicate=_router_8bit)
    plain.set_dtype(DT)
    mx.eval(plain.parameters())
    patched = factory()
    nn.quantize(patched, group_size=64, bits=4, class_predicate=_router_8bit)
    patched.update(plain.parameters())
    mx.eval(patched.parameters())

    class Holder(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.block = inner

    holder = Holder(patched)
    report = zmlx_rs.patch(holder)
    if not report.patched:
        raise SystemExit(f"nothing patched:\n{report}")
    return plain, holder.block


def node_count(out: mx.array) -> int:
    with tempfile.NamedTemporaryFile("r", suffix=".dot") as f:
        mx.export_to_dot(f.name, out)
        return f.read().count("shape=rectangle")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    rows, results = [], []
    for name, pattern, factory, hidden in cases():
        plain, patched = twin(factory)
        for tokens in (1, 128):
            xs = [mx.random.normal((1, tokens, hidden)).astype(DT) for _ in range(8)]
            mx.eval(xs)
            ref, out = plain(xs[0]), patched(xs[0])
            nodes = (node_count(ref), node_count(out))  # before evaluation empties the graph
            err = mx.abs(ref.astype(mx.float32) - out.astype(mx.float32)).max().item()
            n = 16 if args.quick or tokens > 1 else 64
            timed = interleaved(
                {
                    "unpatched": lambda i, m=plain, xs=xs: m(xs[i % len(xs)]),
                    "patched": lambda i, m=patched, xs=xs: m(xs[i % len(xs)]),
                },
                n,
                rounds,
            )
            build = ratio_stats(*([b for b, _ in timed[k]] for k in ("patched", "unpatched")))
            evals = ratio_stats(*([e for _, e in timed[k]] for k in ("patched", "unpatched")))
            us = {k: median([e for _, e in v]) * 1e6 for k, v in timed.items()}
            results.append(
                {
                    "case": name,
                    "pattern": pattern,
                    "tokens": tokens,
                    "nodes": {"unpatched": nodes[0], "patched": nodes[1]},
                    "eval_us": us,
                    "eval_ratio": evals,
                    "build_ratio": build,
                    "max_abs_err": err,
                }
            )
            rows.append(
                [
                    name,
                    str(tokens),
                    f"{nodes[0]} -> {nodes[1]}",
                    f"{us['unpatched']:.1f} -> {us['patched']:.1f}",
                    f"{evals['median']:.3f} [{evals['min']:.3f}, {evals['max']:.3f}]",
                    f"{build['median']:.3f}",
                    f"{err:.2e}",
                ]
            )
    path = write_json(
        "patch_modules.json", {"device": device_name(), "rounds": rounds, "results": results}
    )
    header = ["module", "tokens", "nodes", "eval us", "eval patched/plain", "build", "max err"]
    print(table(rows, header))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
