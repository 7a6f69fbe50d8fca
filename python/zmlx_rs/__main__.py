"""`python -m zmlx_rs demo | bench | patch PATH`.

- `demo`: builds a random-weight model of a real architecture offline (Qwen3-30B-A3B shape,
  4-bit, on a CUDA GPU; the same architecture scaled down elsewhere), runs smart_patch,
  prints the report and generates with the patched model.
- `bench`: the end-to-end benchmark (see `zmlx_rs.bench`).
- `patch PATH`: loads a local mlx-lm checkpoint folder, smart_patches it, prints the plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step

from zmlx_rs import _backend, bench, measure, synthetic
from zmlx_rs.smart import WORKLOADS, smart_patch


def _smart_options(parser: argparse.ArgumentParser, budget: float) -> None:
    parser.add_argument("--budget", type=float, default=budget, help="smart_patch seconds")
    parser.add_argument("--min-gain", type=float, default=0.02, help="e.g. 0.02 = 2%%")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated: decode,prefill"
    )
    parser.add_argument("--remeasure", action="store_true", help="ignore a cached plan")


def _smart(model: nn.Module, tokenizer: Any, args: argparse.Namespace) -> Any:
    return smart_patch(
        model,
        tokenizer,
        workloads=tuple(w.strip() for w in args.workloads.split(",") if w.strip()),
        budget_s=args.budget,
        min_gain=args.min_gain,
        remeasure=args.remeasure,
    )


def _generate(model: nn.Module, tokenizer: Any, prompt: mx.array, tokens: int) -> None:
    start = time.perf_counter()
    first = 0.0
    out: list[int] = []
    for n, (token, _) in enumerate(generate_step(prompt, model, max_tokens=tokens), 1):
        if n == 1:
            first = time.perf_counter()
        out.append(int(token))
    end = time.perf_counter()
    rate = (len(out) - 1) / (end - first) if len(out) > 1 else float("nan")
    print(
        f"generated {len(out)} tokens: first after {first - start:.2f} s, then {rate:.1f} tokens/s"
    )
    if tokenizer is not None:
        print(repr(tokenizer.decode(out)))
    else:
        print("token ids:", out)


def demo(args: argparse.Namespace) -> None:
    shape, dtype = synthetic.sized("qwen3-30b-a3b", scaled=not _backend.HAS_CUDA)
    print(f"building a random-weight {shape.notes} model ({_backend.name()})...", flush=True)
    start = time.perf_counter()
    model = synthetic.build(shape, layers=args.layers, dtype=dtype)
    print(f"built in {time.perf_counter() - start:.1f} s; smart_patch...", flush=True)
    report = _smart(model, None, args)
    print(report)
    prompt = measure.prompt_tokens(model, None, 32)
    _generate(model, None, prompt, args.tokens)


def patch_checkpoint(args: argparse.Namespace) -> None:
    from mlx_lm.utils import load, load_model

    path = Path(args.path)
    if not (path / "config.json").is_file():
        raise SystemExit(f"patch: PATH must be an mlx-lm checkpoint folder, got {str(path)!r}")
    tokenizer: Any = None
    try:
        model, tokenizer = load(str(path))[:2]
    except (OSError, ValueError) as e:
        # Weights without tokenizer files: measure on token ids.
        print(f"no tokenizer ({type(e).__name__}); using token ids", file=sys.stderr)
        model = load_model(path)[0]
    report = _smart(model, tokenizer, args)
    print(report)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zmlx_rs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="random-weight model, smart_patch, generate")
    _smart_options(p, budget=120.0 if _backend.HAS_CUDA else 30.0)
    p.add_argument("--layers", type=int, default=None, help="layer count override")
    p.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    p = sub.add_parser("bench", help="end-to-end benchmark, patched vs unpatched")
    bench.add_arguments(p)
    p = sub.add_parser("patch", help="smart_patch a local mlx-lm checkpoint folder")
    p.add_argument("path")
    _smart_options(p, budget=120.0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args)
    elif args.command == "bench":
        bench.run(args)
    else:
        patch_checkpoint(args)


if __name__ == "__main__":
    main()
