"""patch(model) / unpatch(model): swap mlx-lm module instances for fused ones and back.

Module instances are swapped (not functions monkey-patched: model files import helpers by
name). Each fused module keeps the module it replaced, whose stacked weights it took over;
`unpatch` cuts them back out, so the restored model computes bitwise what it did before.
Both are idempotent.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import mlx.nn as nn

from zmlx_rs import _backend, _compile
from zmlx_rs import patterns as registry
from zmlx_rs.errors import ZmlxError
from zmlx_rs.patterns import OK, Fused, Pattern
from zmlx_rs.report import Patched, PatchReport, Skipped

__all__ = ["patch", "unpatch"]


def patch(
    model: nn.Module,
    *,
    patterns: Iterable[str | Pattern] | None = None,
    exclude: Iterable[str] | None = None,
    plan: PatchReport | dict[str, Any] | None = None,
    decode_graphs: bool | None = None,
    verbose: bool = False,
) -> PatchReport:
    """Fuse what can be fused in `model`, in place; returns what was done and why not.

    - `patterns`: names (or Pattern objects) to try, in registry order; default: those of
      `zmlx_rs.patterns.ALL` whose `by_default` is set (the opt-in one, qmv, runs when
      named; smart_patch measures them all).
    - `exclude`: pattern names, or module-path globs (`"model.layers.0.*"`), to leave alone.
    - `plan`: a PatchReport (or its `to_dict()`) from an earlier `patch`: patch exactly the
      modules it lists as patched, each still checked by its pattern.
    - `decode_graphs`: whether the model's fused modules replay their decode forwards as one
      compiled call each on MLX-CUDA (`patterns.DecodeGraph`: the same numbers, less host
      time per token, a gain where the host bounds decode); default: the plan's setting,
      else on for a model with a `moe_decode` block on MLX-CUDA (a host-bound step), off for
      others. It applies to every fused module of the model, already patched ones too.
    - `verbose`: print the report.

    Patch after loading, quantizing and sharding (`model.shard()`), before LoRA conversion.
    """
    if not isinstance(model, nn.Module):
        raise ZmlxError(f"patch(): 'model' must be an mlx.nn.Module, got {type(model).__name__}")
    if decode_graphs is not None and not isinstance(decode_graphs, bool):
        raise ZmlxError(f"patch(): 'decode_graphs' must be a bool or None, got {decode_graphs!r}")
    chosen = _choose(patterns, exclude)
    excluded_paths = [e for e in (exclude or ()) if e not in registry.names()]
    wanted: set[tuple[str, str]] | None = None
    if plan is not None:
        if isinstance(plan, dict):
            plan = PatchReport.from_dict(plan)
        wanted = {(p.path, p.pattern) for p in plan.patched}
        chosen = [p for p in chosen if any(p.name == name for _, name in wanted)]
        if decode_graphs is None:
            decode_graphs = plan.decode_graphs

    report = PatchReport(model_type=_model_type(model))
    # A module reachable by two paths (shared between layers) is fused once.
    fused_by_id: dict[int, tuple[str, Fused]] = {}
    for path, module in model.named_modules():
        if isinstance(module, Fused):
            report.patched.append(Patched(path, module.pattern, "already patched"))
    for pattern in chosen:
        # Re-walk per pattern: an outer rewrite keeps its children's paths.
        for path, module in model.named_modules():
            if not path:
                continue
            if id(module) in fused_by_id:
                first, fused = fused_by_id[id(module)]
                _set_module(model, path, fused)
                report.patched.append(Patched(path, fused.pattern, f"shared with {first}"))
                continue
            verdict = pattern.matches(module, path)
            if verdict is None:
                continue
            if verdict != OK:
                report.skipped.append(Skipped(path, pattern.name, verdict))
            elif any(fnmatch.fnmatchcase(path, glob) for glob in excluded_paths):
                report.skipped.append(Skipped(path, pattern.name, "excluded"))
            elif wanted is not None and (path, pattern.name) not in wanted:
                report.skipped.append(Skipped(path, pattern.name, "not in the plan"))
            else:
                fused = pattern.apply(module, path)
                # Eval mode picks the kernels' one-node inference entry points.
                fused.train(module.training)
                # Reverted by the same object, registered or not.
                object.__setattr__(fused, "made_by", pattern)
                fused_by_id[id(module)] = (path, fused)
                _set_module(model, path, fused)
                report.patched.append(Patched(path, pattern.name, fused.note))
    for pattern in chosen:
        pattern.finish(model)
    fused_modules = [m for _, m in model.named_modules() if isinstance(m, Fused)]
    if decode_graphs is None:
        decode_graphs = _backend.on_cuda() and any(
            _maker(m).graphs_by_default for m in fused_modules
        )
    report.decode_graphs = decode_graphs
    for module in fused_modules:
        object.__setattr__(module, "decode_graphs", decode_graphs)
    # A module another pattern took is not "skipped" by the ones that did not fit it.
    taken = {p.path for p in report.patched}
    report.skipped = [s for s in report.skipped if s.path not in taken]
    report.patched.sort(key=lambda p: _path_order(p.path))
    report.skipped.sort(key=lambda s: _path_order(s.path))
    if report.patched and _backend.on_cuda():
        # Load NVRTC and probe now, so the report says which launch path the kernels take.
        _compile.compiler()
    if verbose:
        print(report)
    return report


def _maker(module: Fused) -> Pattern:
    """The pattern that made a fused module."""
    return module.__dict__.get("made_by") or registry.get(module.pattern)


def unpatch(model: nn.Module) -> list[str]:
    """Put every original module back (innermost first); returns the paths restored."""
    if not isinstance(model, nn.Module):
        raise ZmlxError(f"unpatch(): 'model' must be an mlx.nn.Module, got {type(model).__name__}")
    blocked = [
        f"{p}: {why}"
        for p, m in model.named_modules()
        if isinstance(m, Fused) and (why := m.revert_blocker())
    ]
    if blocked:
        raise ZmlxError(f"unpatch(): 'model' cannot be restored: {'; '.join(blocked)}")
    restored: list[str] = []
    # A pattern may wrap another's fused module (the same path twice): loop until none left.
    while found := [(p, m) for p, m in model.named_modules() if isinstance(m, Fused)]:
        found.sort(key=lambda pm: pm[0].count("."), reverse=True)
        originals: dict[int, nn.Module] = {}  # a module shared by several paths reverts once
        for path, module in found:
            if id(module) not in originals:
                originals[id(module)] = _maker(module).revert(module)
            _set_module(model, path, originals[id(module)])
            if path not in restored:
                restored.append(path)
    return restored


def _choose(
    patterns: Iterable[str | Pattern] | None, exclude: Iterable[str] | None
) -> list[Pattern]:
    if isinstance(patterns, str):
        raise ZmlxError(f"patch(): 'patterns' must be a list of names, got the string {patterns!r}")
    if isinstance(exclude, str):
        raise ZmlxError(f"patch(): 'exclude' must be a list of names, got the string {exclude!r}")
    if patterns is None:
        chosen = [p for p in registry.ALL if p.by_default]
    else:
        given = [p if isinstance(p, Pattern) else registry.get(p) for p in patterns]
        order = {p.name: i for i, p in enumerate(registry.ALL)}
        chosen = sorted(given, key=lambda p: order.get(p.name, len(order)))
    skip = set(exclude or ())
    return [p for p in chosen if p.name not in skip]


def _model_type(model: nn.Module) -> str:
    args = getattr(model, "args", None)
    return str(getattr(model, "model_type", None) or getattr(args, "model_type", "") or "")


def _path_order(path: str) -> list[tuple[int, int | str]]:
    """Sorts "layers.10" after "layers.9"."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.split(".")]


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    *parents, last = path.split(".")
    parent: Any = model
    for part in parents:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    if isinstance(parent, list):
        parent[int(last)] = module
    else:
        parent[last] = module
