"""PatchReport: what `patch()` did to a model, as data.

Which module path got which pattern, and which candidates were skipped and why. It prints
as a table, renders as HTML in Jupyter, and round-trips through JSON (`to_dict` /
`from_dict`) so a plan can be cached and re-applied with `patch(model, only=report)`.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

from zmlx_rs import _backend, _compile
from zmlx_rs.errors import ZmlxError

__all__ = ["PatchReport", "Patched", "Skipped"]

_FORMAT = 1


@dataclass(frozen=True)
class Patched:
    path: str
    pattern: str
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    path: str
    pattern: str
    reason: str


@dataclass
class PatchReport:
    """`patched`: modules swapped by this call, or already fused before it (`note` says so);
    `skipped`: candidates left alone, with the reason; `model_type`: from the model's args;
    `decode_graphs`: whether the fused modules replay decode forwards as compiled graphs."""

    patched: list[Patched] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    model_type: str = ""
    decode_graphs: bool = False

    @property
    def kernels(self) -> dict[str, Any]:
        """How the fused kernels launch, live: `path` ("precompiled" cubins or the
        "cuda_kernel" JIT), `reason` when precompiled is off, per-kernel `fallbacks`, cache
        hits/misses (`zmlx_rs._compile.report()`)."""
        return _compile.report()

    def paths(self, pattern: str | None = None) -> list[str]:
        """Patched module paths, of one pattern if given."""
        return [p.path for p in self.patched if pattern is None or p.pattern == pattern]

    def counts(self) -> dict[str, int]:
        """Patched modules per pattern."""
        out: dict[str, int] = {}
        for p in self.patched:
            out[p.pattern] = out.get(p.pattern, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "model_type": self.model_type,
            "patched": [asdict(p) for p in self.patched],
            "skipped": [asdict(s) for s in self.skipped],
            "decode_graphs": self.decode_graphs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchReport:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ZmlxError(f"PatchReport.from_dict(): 'format' must be {_FORMAT}, got {got!r}")
        graphs = data.get("decode_graphs", False)  # absent from plans before it existed
        if not isinstance(graphs, bool):
            raise ZmlxError(
                f"PatchReport.from_dict(): 'decode_graphs' must be a bool, got {graphs!r}"
            )
        try:
            return cls(
                patched=[Patched(**p) for p in data["patched"]],
                skipped=[Skipped(**s) for s in data["skipped"]],
                model_type=str(data.get("model_type", "")),
                decode_graphs=graphs,
            )
        except (KeyError, TypeError) as e:
            raise ZmlxError(f"PatchReport.from_dict(): malformed 'data': {e}") from e

    def _rows(self) -> list[tuple[str, str, str, str]]:
        rows = [(p.path, p.pattern, "patched", p.note) for p in self.patched]
        rows += [(s.path, s.pattern, "skipped", s.reason) for s in self.skipped]
        return rows

    def _summary(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "nothing"
        model = f" {self.model_type}" if self.model_type else ""
        out = f"PatchReport{model}: patched {counts}; skipped {len(self.skipped)}"
        if self.decode_graphs:
            out += "; decode graphs on"
        if _backend.on_cuda():
            k = self.kernels
            out += f"; kernels: {k['path']}"
            if k["reason"]:
                out += f" ({k['reason']})"
            if k["fallbacks"]:
                out += f", {len(k['fallbacks'])} through the JIT (see .kernels)"
        return out

    def __str__(self) -> str:
        rows = self._rows()
        if not rows:
            return self._summary()
        head = ("module", "pattern", "status", "detail")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        lines = [self._summary()]
        for r in [head, *rows]:
            cells = [c.ljust(w) for c, w in zip(r[:3], widths, strict=True)]
            lines.append("  ".join([*cells, r[3]]))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._rows()
        )
        return (
            f"<p>{html.escape(self._summary())}</p><table><thead><tr><th>module</th>"
            f"<th>pattern</th><th>status</th><th>detail</th></tr></thead>"
            f"<tbody>{cells}</tbody></table>"
        )
