"""Streaming detokenizer cost per token: zmlx_rs's Rust detokenizer against mlx-lm's (the class
mlx-lm picks for the tokenizer, and its naive one), read the way `stream_generate` reads it
(add_token, last_segment; finalize, last_segment), over 1k/4k/16k-token generations with and
without newlines. Writes benchmarks/results/detok.json and prints a table."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the trained tokenizer fixtures

from mlx_lm.tokenizer_utils import NaiveStreamingDetokenizer  # noqa: E402
from mlx_lm.tokenizer_utils import load as load_tokenizer  # noqa: E402
from tokenizer_fixtures import CORPUS, TOKENIZERS, write_tokenizer  # noqa: E402
from zmlx_rs.detok import detokenizer_for  # noqa: E402

LENGTHS = (1024, 4096, 16384)


def token_stream(wrapper, n: int, newlines: bool) -> list[int]:
    """`n` token ids of real text: the corpus, one line per entry or all on one line."""
    sep = "\n" if newlines else " "
    text = sep.join(line.replace("\n", sep) for line in CORPUS)
    ids = wrapper.encode(text, add_special_tokens=False)
    return (ids * (n // len(ids) + 1))[:n]


def run(detokenizer, ids: list[int]) -> float:
    """Seconds for one generation's worth of detokenization."""
    detokenizer.reset()
    start = time.perf_counter()
    for token in ids:
        detokenizer.add_token(token)
        detokenizer.last_segment  # noqa: B018
    detokenizer.finalize()
    detokenizer.last_segment  # noqa: B018
    return time.perf_counter() - start


def best_us_per_token(detokenizer, ids: list[int], budget_s: float) -> float:
    """Best of repeated runs within about `budget_s` (at least one run)."""
    times = [run(detokenizer, ids)]
    while sum(times) < budget_s and len(times) < 20:
        times.append(run(detokenizer, ids))
    return min(times) / len(ids) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detok.json")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument(
        "--extra-naive-max",
        type=int,
        default=4096,
        help="longest generation for mlx-lm's naive detokenizer on tokenizers it does not pick",
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(TOKENIZERS):
            wrapper = load_tokenizer(write_tokenizer(name, Path(tmp) / name))
            impls = {
                "zmlx_rs": detokenizer_for(wrapper),
                f"mlx-lm {type(wrapper._detokenizer).__name__}": wrapper.detokenizer,
            }
            if not isinstance(wrapper._detokenizer, NaiveStreamingDetokenizer):
                impls["mlx-lm NaiveStreamingDetokenizer"] = NaiveStreamingDetokenizer(
                    wrapper._tokenizer
                )
            for newlines in (True, False):
                for n in LENGTHS:
                    ids = token_stream(wrapper, n, newlines)
                    for impl, detokenizer in impls.items():
                        extra_naive = impl == "mlx-lm NaiveStreamingDetokenizer" and not isinstance(
                            wrapper._detokenizer, NaiveStreamingDetokenizer
                        )
                        if extra_naive and n > args.extra_naive_max:
                            continue
                        us = best_us_per_token(detokenizer, ids, args.budget)
                        rows.append(
                            {
                                "tokenizer": name,
                                "mlx_lm_class": type(wrapper._detokenizer).__name__,
                                "impl": impl,
                                "tokens": n,
                                "newlines": newlines,
                                "us_per_token": round(us, 3),
                            }
                        )
                        print(f"{name:28} {impl:36} n={n:6} newlines={newlines!s:5} {us:9.3f} us")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.platform(), "processor": platform.processor(), "rows": rows},
            indent=1,
        )
    )
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """µs/token per implementation, with zmlx_rs's speed-up over each mlx-lm class."""
    print()
    print(
        f"{'tokenizer':28} {'n':>6} {'nl':>3} {'zmlx_rs':>9} {'mlx-lm':>9} {'x':>6} "
        f"{'naive':>9} {'x':>7}"
    )
    keys = sorted({(r["tokenizer"], r["newlines"], r["tokens"]) for r in rows})
    for tokenizer, newlines, n in keys:
        group = {
            r["impl"]: r["us_per_token"]
            for r in rows
            if (r["tokenizer"], r["newlines"], r["tokens"]) == (tokenizer, newlines, n)
        }
        ours = group.pop("zmlx_rs")
        naive = group.pop("mlx-lm NaiveStreamingDetokenizer", None)
        picked = next(iter(group.values()), naive)
        naive_cols = "        -       -" if naive is None else f"{naive:9.3f} {naive / ours:7.1f}"
        print(
            f"{tokenizer:28} {n:6} {'y' if newlines else 'n':>3} {ours:9.3f} {picked:9.3f} "
            f"{picked / ours:6.1f} {naive_cols}"
        )


if __name__ == "__main__":
    main()
