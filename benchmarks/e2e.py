"""End-to-end decode/prefill benchmark, patched vs unpatched (see `zmlx_rs.bench`).

    python benchmarks/e2e.py --models qwen3-30b-a3b,mistral-7b --layers 48 --rounds 8

Writes JSON under benchmarks/results/ and prints a markdown table; `--readme` also puts the
table into README.md between the e2e markers; `--readme-from RESULT.json` only does that,
from an earlier run's JSON.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from zmlx_rs import bench

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"


def update_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    readme.write_text(pattern.sub(lambda _: block, text))
    print(f"[e2e] updated {readme}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--readme-from"] and len(argv) == 2:
        update_readme(bench.markdown_table(json.loads(Path(argv[1]).read_text())))
        sys.exit()
    readme = "--readme" in argv
    argv = [a for a in argv if a != "--readme"]
    result = bench.main(argv, default_out=ROOT / "benchmarks" / "results")
    if readme:
        update_readme(bench.markdown_table(result))
