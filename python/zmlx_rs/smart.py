"""smart_patch: keep only the patterns that measurably speed this model up on this machine.

Each candidate pattern is applied alone, checked for numerics against the unpatched model
(identical greedy tokens, except where the unpatched model's top two logits tie at its
dtype's precision; logits within a dtype tolerance), then timed against the
unpatched model in interleaved A/B rounds (A B | B A | A B ...) in this process, after a
warm-up that takes JIT compilation out of the timings. The per-round throughput ratios go
to the Rust statistics (`zmlx_rs._native.compare_rounds`): median ratio and a seeded
percentile-bootstrap interval per workload; a pattern is kept when, on the workloads asked
for, it gains more than `min_gain` on at least one and loses more than `min_gain` on none.
The kept set is re-checked together against the unpatched model before it is applied.
Where no pattern wins alone, the patterns that did not lose are measured together the same
way and kept together if that wins: fusions whose savings are too small to show one at a
time can add up (on a host-bound decode step, each removes a share of the host's work).
Where modules of the chosen set replay their decode forward as compiled graphs on this
backend, the set with graphs is timed against the set without them, and graphs stay on if
that wins.

The decision is cached on disk, keyed by a fingerprint of the model (class, config,
parameter names, shapes and dtypes), the backend, the device, the versions and the
options, so the next `smart_patch` of the same model on the same machine applies the plan
without measuring. Cache folder: `$ZMLX_RS_CACHE_DIR`, else `$XDG_CACHE_HOME/zmlx_rs`, else
`~/.cache/zmlx_rs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx.utils import tree_flatten

from zmlx_rs import _backend, _native, measure
from zmlx_rs import patterns as registry
from zmlx_rs.checkpoint import inspect as inspect_checkpoint
from zmlx_rs.errors import ZmlxError
from zmlx_rs.patch import patch, unpatch
from zmlx_rs.patterns import Pattern
from zmlx_rs.patterns._base import graphs_built
from zmlx_rs.report import PatchReport

__all__ = [
    "CACHE_DIR_VARIABLE",
    "Decision",
    "Measurement",
    "SmartPatchReport",
    "cache_dir",
    "smart_patch",
]

CACHE_DIR_VARIABLE = "ZMLX_RS_CACHE_DIR"
WORKLOADS = ("decode", "prefill")

_MAX_ROUNDS = 16
# Rounds each check of a set (the kept or joint set, its extension, decode graphs) is given at
# least, when budgeting the candidates.
_VERIFY_ROUNDS = 3
_NUMERICS_STEPS = 16
# A 64-token prompt sends every MoE layer down its sorted (prefill) path too.
_NUMERICS_PROMPT = 64
_DECODE_PROMPT = 32
_PREFILL_PROMPT = 512  # at most; shorter when the model is too slow for the budget
# 2: the joint set where no pattern wins alone, decode graphs measured; 3: the extension
_CACHE_FORMAT = 3


@dataclass(frozen=True)
class Measurement:
    """One workload's paired rounds: patched / unpatched throughput, median and interval."""

    workload: str
    rounds: int
    median_ratio: float
    ci_low: float
    ci_high: float
    verdict: str

    def describe(self) -> str:
        return f"{self.median_ratio:.3f}x [{self.ci_low:.3f}, {self.ci_high:.3f}] {self.verdict}"


@dataclass(frozen=True)
class Decision:
    """What smart_patch decided for one pattern (or, as `verification`, for the kept set)."""

    pattern: str
    kept: bool
    reason: str
    measurements: tuple[Measurement, ...] = ()
    max_abs_dlogit: float | None = None

    def ratio(self, workload: str) -> Measurement | None:
        return next((m for m in self.measurements if m.workload == workload), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(
            pattern=str(data["pattern"]),
            kept=bool(data["kept"]),
            reason=str(data["reason"]),
            measurements=tuple(Measurement(**m) for m in data["measurements"]),
            max_abs_dlogit=data.get("max_abs_dlogit"),
        )


@dataclass
class SmartPatchReport(PatchReport):
    """A PatchReport plus why each candidate pattern was kept or dropped, the re-check of
    the kept set (or, where none won alone, the measurement of the patterns that did not
    lose, together), the kept set with the patterns that did not lose added against the kept
    set alone (`extension`: None where there were none to add), decode graphs against none
    for the final set (`graphs`: None where no module took a graph), and whether the plan
    came from the cache."""

    decisions: list[Decision] = field(default_factory=list)
    verification: Decision | None = None
    extension: Decision | None = None
    graphs: Decision | None = None
    workloads: tuple[str, ...] = WORKLOADS
    cached: bool = False
    elapsed_s: float = 0.0

    @property
    def kept(self) -> list[str]:
        return [d.pattern for d in self.decisions if d.kept]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["smart"] = {
            "decisions": [d.to_dict() for d in self.decisions],
            "verification": None if self.verification is None else self.verification.to_dict(),
            "extension": None if self.extension is None else self.extension.to_dict(),
            "graphs": None if self.graphs is None else self.graphs.to_dict(),
            "workloads": list(self.workloads),
            "cached": self.cached,
            "elapsed_s": self.elapsed_s,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmartPatchReport:
        report = super().from_dict(data)
        assert isinstance(report, SmartPatchReport)
        try:
            smart = data["smart"]
            report.decisions = [Decision.from_dict(d) for d in smart["decisions"]]
            v = smart["verification"]
            report.verification = None if v is None else Decision.from_dict(v)
            e = smart["extension"]
            report.extension = None if e is None else Decision.from_dict(e)
            g = smart["graphs"]
            report.graphs = None if g is None else Decision.from_dict(g)
            report.workloads = tuple(smart["workloads"])
            report.cached = bool(smart["cached"])
            report.elapsed_s = float(smart["elapsed_s"])
        except (KeyError, TypeError, ValueError) as e:
            raise ZmlxError(f"SmartPatchReport.from_dict(): malformed 'data': {e!r}") from e
        return report

    def _decision_rows(self) -> list[tuple[str, ...]]:
        rows = []
        checks = (self.verification, self.extension, self.graphs)
        decisions = [*self.decisions, *(d for d in checks if d)]
        for d in decisions:
            cells = [d.pattern, "kept" if d.kept else "dropped"]
            for w in self.workloads:
                m = d.ratio(w)
                cells.append(m.describe() if m else "-")
            cells.append(d.reason)
            rows.append(tuple(cells))
        return rows

    def _smart_summary(self) -> str:
        kept = ", ".join(self.kept) or "nothing"
        source = "cached plan" if self.cached else f"measured in {self.elapsed_s:.1f} s"
        return f"smart_patch: kept {kept} ({source})"

    def __str__(self) -> str:
        head = ("pattern", "decision", *self.workloads, "reason")
        rows = [head, *self._decision_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = [super().__str__(), "", self._smart_summary()]
        for r in rows:
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = ("pattern", "decision", *self.workloads, "reason")
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._decision_rows()
        )
        return (
            f"{super()._repr_html_()}<p>{html.escape(self._smart_summary())}</p>"
            f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
        )


def cache_dir() -> Path:
    """Where plans are cached: `$ZMLX_RS_CACHE_DIR`, else the platform's user cache dir."""
    explicit = os.environ.get(CACHE_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "zmlx_rs"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zmlx_rs"


def smart_patch(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    patterns: Iterable[str | Pattern] | None = None,
    workloads: Sequence[str] = WORKLOADS,
    budget_s: float = 120.0,
    min_gain: float = 0.02,
    remeasure: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> SmartPatchReport:
    """Patch `model` in place with the patterns that make it faster here; returns the report.
    Starts from the unpatched model: an earlier `patch` is undone first.

    - `tokenizer`: prompts are text through it when given, else random token ids.
    - `patterns`: candidates (names or Pattern objects); default: all registered patterns.
    - `workloads`: which of "decode" (tokens/s through `generate_step`) and "prefill"
      (prompt tokens/s) to measure; a pattern must gain on one and lose on none.
    - `budget_s`: wall-clock seconds for measuring; undecided patterns are dropped.
    - `min_gain`: the gain (0.02 = 2%) the confidence interval's lower bound must exceed.
    - `remeasure`: ignore a cached plan (and overwrite it).
    - `progress`: show a progress bar on stderr.
    - `checkpoint`: the folder `model` was loaded from; the plan cache is then keyed by its
      `zmlx_rs.checkpoint.inspect` fingerprint (safetensors headers only) instead of a walk
      over the model's parameters.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ZmlxError(
            f"smart_patch(): 'model' must be an mlx.nn.Module, got {type(model).__name__}"
        )
    chosen = _choose(patterns)
    asked = _check_workloads(workloads)
    if not (isinstance(budget_s, int | float) and budget_s > 0 and math.isfinite(budget_s)):
        raise ZmlxError(f"smart_patch(): 'budget_s' must be a number > 0, got {budget_s!r}")
    if not (isinstance(min_gain, int | float) and 0 <= min_gain < 1):
        raise ZmlxError(f"smart_patch(): 'min_gain' must be in [0, 1), got {min_gain!r}")

    unpatch(model)
    key_material = _key_material(model, chosen, asked, float(min_gain), checkpoint)
    path = cache_dir() / "plans" / f"{_digest(key_material)}.json"
    if not remeasure:
        cached = _load_plan(path, key_material)
        if cached is not None:
            applied = patch(model, patterns=chosen, plan=cached) if cached.patched else None
            done = applied.patched if applied is not None else []
            if {(p.path, p.pattern) for p in done} == {(p.path, p.pattern) for p in cached.patched}:
                cached.cached = True
                cached.elapsed_s = time.perf_counter() - start
                return cached
            unpatch(model)  # the plan no longer fits this model: measure again

    bar = _Progress(progress, float(budget_s))
    try:
        report = _Session(model, tokenizer, chosen, asked, float(min_gain), bar, start).run()
    except BaseException:
        unpatch(model)
        raise
    finally:
        bar.close()
    report.elapsed_s = time.perf_counter() - start
    _store_plan(path, key_material, report)
    return report


def _choose(patterns: Iterable[str | Pattern] | None) -> list[Pattern]:
    if isinstance(patterns, str):
        raise ZmlxError(
            f"smart_patch(): 'patterns' must be a list of names, got the string {patterns!r}"
        )
    if patterns is None:
        return list(registry.ALL)
    return [p if isinstance(p, Pattern) else registry.get(p) for p in patterns]


def _check_workloads(workloads: Sequence[str]) -> tuple[str, ...]:
    if isinstance(workloads, str):
        workloads = (workloads,)
    asked = tuple(dict.fromkeys(workloads))
    if not asked or any(w not in WORKLOADS for w in asked):
        raise ZmlxError(
            f"smart_patch(): 'workloads' must be a non-empty subset of {WORKLOADS}, "
            f"got {tuple(workloads)!r}"
        )
    return asked


# ---------------------------------------------------------------------------- plan cache


def _fingerprint(
    model: nn.Module, checkpoint: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """What decides speed: the architecture, its config, and every parameter's name, shape
    and dtype (quantization included), from the checkpoint's headers when the model came from
    one. Weight values do not enter."""
    args = getattr(model, "args", None)
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        config: Any = dataclasses.asdict(args)
    else:
        config = vars(args) if args is not None else {}
    cls = type(model)
    fingerprint: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": config,
    }
    if checkpoint is not None:
        fingerprint["checkpoint"] = inspect_checkpoint(checkpoint).fingerprint
    else:
        fingerprint["parameters"] = [
            (name, list(a.shape), str(a.dtype))
            for name, a in tree_flatten(model.parameters())
            if isinstance(a, mx.array)
        ]
    return fingerprint


def _device_name() -> str:
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    return str(info.get("device_name", "unknown"))


def _key_material(
    model: nn.Module,
    chosen: list[Pattern],
    workloads: tuple[str, ...],
    min_gain: float,
    checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    material = {
        "format": _CACHE_FORMAT,
        "model": _fingerprint(model, checkpoint),
        "backend": _backend.name(),
        "device": _device_name(),
        "versions": {
            "zmlx_rs": _native.__version__,
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        },
        "patterns": [p.name for p in chosen],
        "workloads": list(workloads),
        "min_gain": min_gain,
    }
    # As JSON gives it back (tuples become lists), so a loaded key compares equal.
    return json.loads(json.dumps(material, sort_keys=True, default=str))


def _digest(material: dict[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _load_plan(path: Path, material: dict[str, Any]) -> SmartPatchReport | None:
    """The cached report, or None when absent, unreadable or for other key material (a
    corrupt file is then simply measured again and overwritten)."""
    try:
        data = json.loads(path.read_text())
        if data["key"] != material:
            return None
        return SmartPatchReport.from_dict(data["report"])
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


def _store_plan(path: Path, material: dict[str, Any], report: SmartPatchReport) -> None:
    """Atomic: a temporary file in the same folder, renamed over the plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps({"key": material, "report": report.to_dict()}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plan-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- measuring


class _Progress:
    """A one-line bar on stderr: budget spent and the current phase."""

    def __init__(self, enabled: bool, budget_s: float) -> None:
        self.enabled = enabled
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_phase = ""

    def update(self, phase: str, detail: str = "") -> None:
        if not self.enabled:
            return
        spent = time.perf_counter() - self.start
        if not self.tty:
            # Logs get one line per phase, not a line per refresh.
            if phase != self.last_phase:
                print(f"smart_patch {spent:6.1f}s  {phase}", file=sys.stderr, flush=True)
            self.last_phase = phase
            return
        filled = min(20, int(20 * spent / self.budget_s))
        bar = "#" * filled + "." * (20 - filled)
        line = f"\rsmart_patch [{bar}] {spent:5.1f}/{self.budget_s:.0f}s  {phase} {detail}"
        sys.stderr.write(line[:120].ljust(100))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class _Candidate:
    """A configuration timed against a baseline (the unpatched model unless said): one
    pattern, or a set of them; with decode graphs on or off."""

    name: str
    names: list[str]
    graphs: bool = False
    rounds: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    comparisons: list[_native.Comparison] = field(default_factory=list)
    max_abs_dlogit: float | None = None


class _Session:
    """One measuring run of smart_patch over one model."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        chosen: list[Pattern],
        workloads: tuple[str, ...],
        min_gain: float,
        bar: _Progress,
        start: float,
    ) -> None:
        self.model = model
        self.chosen = chosen
        self.by_name = {p.name: p for p in chosen}
        self.workloads = workloads
        self.min_gain = min_gain
        self.bar = bar
        self.deadline = bar.start + bar.budget_s
        self.start = start
        self.numerics_prompt = measure.prompt_tokens(model, tokenizer, _NUMERICS_PROMPT)
        self.decode_prompt = measure.prompt_tokens(model, tokenizer, _DECODE_PROMPT, seed=1)
        self.prefill_prompt = measure.prompt_tokens(model, tokenizer, _PREFILL_PROMPT, seed=2)
        # One measurement should last long enough to swamp timer and Python noise, and
        # short enough that a small budget still gets its rounds.
        self.measure_s = min(0.5, bar.budget_s / 200)
        # Checks of a set that the candidates' rounds leave budget for: the kept (or joint)
        # set, its extension, and on MLX-CUDA, where decode graphs exist, the final set with
        # graphs.
        self.graph_checks = 1 if _backend.on_cuda() and "decode" in workloads else 0
        self.set_checks = 2 + self.graph_checks
        self.decode_tokens = 16
        self.config_cost = 0.0
        self.numerics_cost = 0.0
        self.dtype: mx.Dtype = mx.float32
        self.reference: tuple[list[mx.array], list[int]] = ([], [])

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    # -- configurations: the unpatched model (None) or a set of patterns
    def use(self, names: Sequence[str] | None, graphs: bool = False) -> None:
        unpatch(self.model)
        if names:
            patch(self.model, patterns=[self.by_name[n] for n in names], decode_graphs=graphs)

    def measure_all(self) -> dict[str, float]:
        out = {}
        if "decode" in self.workloads:
            out["decode"] = measure.decode_tokens_per_s(
                self.model, self.decode_prompt, self.decode_tokens
            )
        if "prefill" in self.workloads:
            out["prefill"] = measure.prefill_tokens_per_s(self.model, self.prefill_prompt)
        return out

    def warm_up(self) -> None:
        """Compiles kernels and fills caches so that no timed measurement pays for them."""
        measure.decode_tokens_per_s(self.model, self.decode_prompt, 4)
        if "prefill" in self.workloads:
            measure.prefill_tokens_per_s(self.model, self.prefill_prompt)

    def numerics(self, names: Sequence[str], graphs: bool = False) -> measure.Numerics:
        self.use(names, graphs)
        trace = measure.logit_trace(
            self.model, self.numerics_prompt, _NUMERICS_STEPS, feed=self.reference[1][:-1]
        )
        return measure.compare_traces(self.reference, trace, self.dtype)

    def run(self) -> SmartPatchReport:
        self.bar.update("warming up the unpatched model")
        self.use(None)
        t = time.perf_counter()
        self.reference = measure.logit_trace(self.model, self.numerics_prompt, _NUMERICS_STEPS)
        self.dtype = _logits_dtype(self.model, self.numerics_prompt)
        self.numerics_cost = time.perf_counter() - t
        measure.decode_tokens_per_s(self.model, self.decode_prompt, 4)  # warm-up
        t = time.perf_counter()
        tps = measure.decode_tokens_per_s(self.model, self.decode_prompt, self.decode_tokens)
        self.decode_tokens = max(8, min(256, round(tps * self.measure_s)))
        if "prefill" in self.workloads:
            # Sized on a short prompt first: a slow model must not spend the budget here.
            short = self.prefill_prompt[:64]
            measure.prefill_tokens_per_s(self.model, short)
            tps = measure.prefill_tokens_per_s(self.model, short)
            length = max(64, min(_PREFILL_PROMPT, 64 * round(tps * self.measure_s / 64)))
            self.prefill_prompt = self.prefill_prompt[:length]
            measure.prefill_tokens_per_s(self.model, self.prefill_prompt)  # warm-up
        self.config_cost = time.perf_counter() - t

        decisions: dict[str, Decision] = {}
        candidates: list[_Candidate] = []
        for pattern in self.chosen:
            self.bar.update(f"checking {pattern.name}")
            if self.left() <= 0:
                decisions[pattern.name] = Decision(pattern.name, False, "budget spent before it")
                continue
            decision, candidate = self.check(pattern)
            if decision is not None:
                decisions[pattern.name] = decision
            if candidate is not None:
                candidates.append(candidate)
        self.use(None)

        self.rounds(candidates)
        kept = []
        for c in candidates:
            keep = _native.keep(c.comparisons)
            decisions[c.name] = Decision(
                c.name,
                keep,
                _reason(c, keep),
                _measurements(self.workloads, c.comparisons),
                c.max_abs_dlogit,
            )
            if keep:
                kept.append(c)

        verification = self.verify(kept, decisions)
        extension = None
        if verification is None:
            verification = self.joint(candidates, decisions)
        elif verification.kept:
            extension = self.extend(kept, candidates, decisions)
        final = [n for n in (p.name for p in self.chosen) if decisions[n].kept]
        graphs = self.graphs(final) if final else None
        self.bar.update("applying the plan")
        self.use(None)
        base = (
            patch(
                self.model,
                patterns=[self.by_name[n] for n in final],
                decode_graphs=graphs is not None and graphs.kept,
            )
            if final
            else None
        )
        return SmartPatchReport(
            patched=base.patched if base else [],
            skipped=base.skipped if base else [],
            model_type=_model_type(self.model),
            decode_graphs=base.decode_graphs if base else False,
            decisions=[decisions[p.name] for p in self.chosen],
            verification=verification,
            extension=extension,
            graphs=graphs,
            workloads=self.workloads,
        )

    def check(self, pattern: Pattern) -> tuple[Decision | None, _Candidate | None]:
        """Does the pattern fit this model, and do its numerics pass? Warms it up if so."""
        unpatch(self.model)
        probe = patch(self.model, patterns=[pattern])
        unpatch(self.model)
        if not probe.patched:
            reasons = sorted({" ".join(s.reason.split()) for s in probe.skipped})
            why = "; ".join(reasons) or "no candidate module"
            return Decision(pattern.name, False, f"matches nothing ({why})"), None
        t = time.perf_counter()
        num = self.numerics([pattern.name])
        self.numerics_cost = max(self.numerics_cost, time.perf_counter() - t)
        if not num.ok:
            self.use(None)
            return _numerics_failed(pattern.name, num), None
        self.warm_up()
        return None, _Candidate(pattern.name, [pattern.name], max_abs_dlogit=num.max_abs_dlogit)

    def rounds(
        self,
        candidates: list[_Candidate],
        reserve: int | None = None,
        baseline: _Candidate | None = None,
    ) -> None:
        """Interleaved rounds, each the baseline (default: the unpatched model) and every
        unsettled candidate, the order mirrored every other round, until all are settled,
        the rounds run out, or the budget, less what `reserve` checks of a set need (default:
        every set check still to come after the candidates), is spent."""
        base = "unpatched" if baseline is None else baseline.name
        for c in candidates:
            c.rounds = {w: ([], []) for w in self.workloads}
        active = list(candidates)
        for r in range(_MAX_ROUNDS):
            if not active:
                return
            cost = self.config_cost * (1 + len(active))
            checks = self.set_checks if reserve is None else reserve
            one = self.numerics_cost + 2 * _VERIFY_ROUNDS * self.config_cost
            spare = checks * one
            if self.left() - spare < cost:
                return
            order: list[_Candidate | None] = [baseline, *active]
            if r % 2:
                order.reverse()
            t = time.perf_counter()
            got: dict[str, dict[str, float]] = {}
            for i, c in enumerate(order):
                name = base if c is baseline else c.name
                self.bar.update(
                    "timing " + ", ".join(x.name for x in candidates),
                    f"round {r + 1}: {name} ({i + 1}/{len(order)})",
                )
                self.use(None if c is None else c.names, c is not None and c.graphs)
                got[name] = self.measure_all()
            self.use(None)
            self.config_cost = (time.perf_counter() - t) / len(order)
            for c in active:
                for w in self.workloads:
                    c.rounds[w][0].append(got[c.name][w])
                    c.rounds[w][1].append(got[base][w])
                c.comparisons = [
                    _native.compare_rounds(*c.rounds[w], min_gain=self.min_gain)
                    for w in self.workloads
                ]
            active = [c for c in active if not _native.settled(c.comparisons)]

    def together(self, names: list[str]) -> Decision:
        """The set `names` applied together: numerics, then rounds against the unpatched
        model with what is left of the budget."""
        label = "+".join(names)
        self.bar.update(f"checking {label} together")
        num = self.numerics(names)
        if not num.ok:
            return _numerics_failed(label, num, "numerics together")
        checked = self.head_to_head(_Candidate(label, names), num)
        return dataclasses.replace(checked, reason="faster together") if checked.kept else checked

    def verify(self, kept: list[_Candidate], decisions: dict[str, Decision]) -> Decision | None:
        """Re-checks the kept set together against the unpatched model; drops the weakest
        pattern and tries again while the set fails and budget remains."""
        while kept:
            names = [c.name for c in kept]
            label = "+".join(names)
            checked = self.together(names)
            if checked.kept:
                return checked
            why = checked.reason
            weakest = min(kept, key=_strength)
            kept.remove(weakest)
            old = decisions[weakest.name]
            decisions[weakest.name] = dataclasses.replace(
                old, kept=False, reason=f"dropped in the re-check of {label}: {why}"
            )
            if self.left() <= 0:
                for c in kept:
                    old = decisions[c.name]
                    decisions[c.name] = dataclasses.replace(
                        old, kept=False, reason="budget spent before the re-check"
                    )
                return None
        return None

    def graphs(self, names: list[str]) -> Decision | None:
        """The chosen set with decode graphs against the set without them, head to head on
        the workloads asked for (a decode graph runs at one token per row; prefill is timed
        too, so a loss there shows); None where decode is not asked for, no module of the
        set took a graph here (another backend) or no budget is left."""
        if "decode" not in self.workloads or self.left() <= 0:
            return None
        label = "decode graphs"
        self.bar.update(f"checking {label}")
        num = self.numerics(names, graphs=True)
        if not graphs_built(self.model):
            return None
        if not num.ok:
            return _numerics_failed(label, num)
        plain = _Candidate("+".join(names), names)
        with_graphs = _Candidate(label, names, graphs=True)
        return self.head_to_head(with_graphs, num, plain, against=f"{plain.name} without graphs")

    def joint(
        self, candidates: list[_Candidate], decisions: dict[str, Decision]
    ) -> Decision | None:
        """Where no pattern won alone: the ones that did not lose (two or more), measured
        together; kept together if that wins. None when there is no such set or no budget."""
        names = [c.name for c in candidates if _not_lost(c)]
        if len(names) < 2 or self.left() <= 0:
            return None
        checked = self.together(names)
        if checked.kept:
            _mark_kept(decisions, names, f"kept with {checked.pattern}: faster together")
        return checked

    def extend(
        self, kept: list[_Candidate], candidates: list[_Candidate], decisions: dict[str, Decision]
    ) -> Decision | None:
        """The verified kept set with every candidate that neither won nor lost alone added,
        head to head against the kept set: fusions can pay only together (one that moves
        the GPU time of a step pays only once another has cut its host time). Kept if that
        wins; None when there is nothing to add or no budget."""
        base = [c.name for c in kept]
        extra = [c.name for c in candidates if _not_lost(c) and not _native.keep(c.comparisons)]
        if not extra or self.left() <= 0:
            return None
        names = [p.name for p in self.chosen if p.name in base or p.name in extra]
        label = "+".join(names)
        self.bar.update(f"checking {label} against {'+'.join(base)}")
        num = self.numerics(names)
        if not num.ok:
            return _numerics_failed(label, num)
        plain = _Candidate("+".join(base), base)
        checked = self.head_to_head(_Candidate(label, names), num, plain, self.graph_checks)
        if checked.kept:
            _mark_kept(decisions, extra, f"kept with {label}: faster than without")
        return checked

    def head_to_head(
        self,
        candidate: _Candidate,
        num: measure.Numerics,
        baseline: _Candidate | None = None,
        reserve: int = 0,
        against: str | None = None,
    ) -> Decision:
        """A set check after its numerics passed: warm-up, then the candidate's rounds against
        `baseline` (default: the unpatched model) leaving budget for `reserve` later checks;
        the reason names the baseline (`against`, default its name) where there is one."""
        self.warm_up()
        self.rounds([candidate], reserve=reserve, baseline=baseline)
        keep = _native.keep(candidate.comparisons)
        reason = _reason(candidate, keep)
        if baseline is not None:
            reason += f", against {against or baseline.name}"
        return Decision(
            candidate.name,
            keep,
            reason,
            _measurements(self.workloads, candidate.comparisons),
            num.max_abs_dlogit,
        )


def _numerics_failed(label: str, num: measure.Numerics, what: str = "numerics") -> Decision:
    """The decision for `label` whose numerics failed: not kept, no measurements."""
    return Decision(label, False, f"{what}: {num.describe()}", (), num.max_abs_dlogit)


def _mark_kept(decisions: dict[str, Decision], names: list[str], reason: str) -> None:
    """Marks the patterns `names` kept (as part of a set that won) with `reason`."""
    for n in names:
        decisions[n] = dataclasses.replace(decisions[n], kept=True, reason=reason)


def _not_lost(c: _Candidate) -> bool:
    """Measured, and no workload's interval below `1 - min_gain`."""
    return bool(c.comparisons) and not any(x.verdict == "loss" for x in c.comparisons)


def _strength(c: _Candidate) -> float:
    return min((x.median_ratio for x in c.comparisons), default=0.0)


def _measurements(
    workloads: tuple[str, ...], comparisons: list[_native.Comparison]
) -> tuple[Measurement, ...]:
    if not comparisons:  # no round fitted in the budget
        return ()
    return tuple(
        Measurement(w, c.rounds, c.median_ratio, c.ci_low, c.ci_high, c.verdict)
        for w, c in zip(workloads, comparisons, strict=True)
    )


def _reason(c: _Candidate, keep: bool) -> str:
    if not c.comparisons:
        return "budget spent before a round"
    parts = [f"{w} {x.verdict}" for w, x in zip(c.rounds, c.comparisons, strict=True)]
    if keep:
        return "faster: " + ", ".join(parts)
    if any(x.rounds < _native.MIN_ROUNDS for x in c.comparisons):
        return f"too few rounds for the budget ({c.comparisons[0].rounds})"
    return "not faster: " + ", ".join(parts)


def _logits_dtype(model: nn.Module, prompt: mx.array) -> mx.Dtype:
    return model(prompt[None, :1])[0].dtype


def _model_type(model: nn.Module) -> str:
    args = getattr(model, "args", None)
    return str(getattr(model, "model_type", None) or getattr(args, "model_type", "") or "")
