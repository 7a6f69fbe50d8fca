"""smart_patch with a planted slow pattern: the model it returns must be no slower than the
unpatched one.

    python benchmarks/smart_planted.py [--model qwen3-30b-a3b] [--layers 24] [--budget 120]

The planted pattern, `planted_slow`, wraps every attention output projection in a module
that computes the projection twice and adds the second times zero: the same numbers, three
more graph nodes and one more 4-bit matmul per layer, the way a fusion that costs more than
it saves would look. smart_patch runs over the default patterns plus the planted one (plan
cache bypassed); then unpatched and smart-patched decode tokens/s are timed through
mlx-lm's `generate_step` in interleaved rounds (AB | BA | ...) and summarised by the Rust
statistics (median ratio, bootstrap 95% interval). Writes
benchmarks/results/smart_planted-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from common import environment, result_name, table, write_json
from zmlx_rs import _backend, _native, measure, synthetic, unpatch
from zmlx_rs import patterns as registry
from zmlx_rs.patterns import OK, Fused, Pattern
from zmlx_rs.smart import smart_patch

PROMPT = 32


class SlowProjection(Fused):
    pattern = "planted_slow"

    def __call__(self, x: mx.array) -> mx.array:
        out = self.original(x)
        return out + 0 * self.original(x)


class PlantedSlow(Pattern):
    name = "planted_slow"
    description = "attention output projection computed twice (benchmark plant)"
    fused_types = (SlowProjection,)

    def matches(self, module: nn.Module, path: str) -> str | None:
        return OK if path.endswith("self_attn.o_proj") else None

    def apply(self, module: nn.Module, path: str) -> Fused:
        return SlowProjection(module)

    def revert(self, fused: Fused) -> nn.Module:
        return fused.original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen3-30b-a3b", choices=sorted(synthetic.SHAPES))
    p.add_argument("--layers", type=int, default=24, help="layer count override")
    p.add_argument("--budget", type=float, default=120.0, help="smart_patch's budget_s")
    p.add_argument("--rounds", type=int, default=8, help="A/B rounds after smart_patch")
    p.add_argument("--tokens", type=int, default=96, help="decode tokens per measurement")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON result")
    args = p.parse_args()

    shape, dtype = synthetic.sized(args.model, scaled=not _backend.HAS_CUDA)
    model = synthetic.build(shape, layers=args.layers, dtype=dtype)
    saved = list(registry.ALL)
    registry.register(PlantedSlow())
    try:
        # patch's default set (opt-in patterns such as qmv left out) plus the plant
        candidates = [p.name for p in registry.ALL if p.by_default]
        t0 = time.perf_counter()
        report = smart_patch(
            model,
            patterns=candidates,
            budget_s=args.budget,
            remeasure=True,
            progress=False,
        )
        smart_s = time.perf_counter() - t0
        kept = report.kept
        print(report)
        prompt = measure.prompt_tokens(model, None, PROMPT, seed=1)
        tps: dict[str, list[float]] = {"unpatched": [], "smart": []}

        def use(config: str) -> None:
            unpatch(model)
            if config == "smart":
                # The kept plan, applied as smart_patch's cache would (no new measurement).
                report_again = smart_patch(model, patterns=candidates, progress=False)
                assert report_again.kept == kept, (report_again.kept, kept)

        for config in tps:  # warm-up
            use(config)
            measure.decode_tokens_per_s(model, prompt, 8)
        for r in range(args.rounds):
            for config in list(tps) if r % 2 == 0 else list(tps)[::-1]:
                use(config)
                tps[config].append(measure.decode_tokens_per_s(model, prompt, args.tokens))
        unpatch(model)
    finally:
        registry.ALL[:] = saved
    c = _native.compare_rounds(tps["smart"], tps["unpatched"], min_gain=0.0)
    payload: dict[str, Any] = {
        **environment(),
        "model": args.model,
        "layers": args.layers,
        "budget_s": args.budget,
        "smart_patch_s": smart_s,
        "kept": kept,
        "planted_kept": "planted_slow" in kept,
        "decisions": report.to_dict(),
        "rounds": args.rounds,
        "tokens": args.tokens,
        "tokens_per_s": tps,
        "smart/unpatched": {"median": c.median_ratio, "ci": [c.ci_low, c.ci_high]},
    }
    path = write_json(result_name("smart_planted"), payload, args.out)
    print(f"{payload['device']} ({payload['backend']}), {args.model} x {args.layers} layers")
    rows = [
        [
            ", ".join(kept) or "-",
            "yes" if payload["planted_kept"] else "no",
            f"{c.median_ratio:.3f}x [{c.ci_low:.3f}, {c.ci_high:.3f}]",
            f"{smart_s:.0f}",
        ]
    ]
    print(table(rows, ["kept", "planted kept", "smart/unpatched decode", "smart_patch s"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
