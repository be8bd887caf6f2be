"""Results of the benchmarks and the printed table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

PROXIES = ("nginx", "wsgate")

# How a metric is judged:
#   ratio>= / ratio<=  wsgate/nginx against the target
#   diff<=             wsgate - nginx against the target (latency, in the metric's unit)
#   abs<               wsgate alone below the target (nginx shown for reference)
#   both>=             nginx and wsgate each at least the target
#   info               no target
Check = Literal["ratio>=", "ratio<=", "diff<=", "abs<", "both>=", "info"]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Metric:
    name: str
    unit: str
    check: Check
    target: float = 0.0
    rounds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROXIES})
    # Median unless stated: "max" reports the worst round (memory peaks).
    summary: Literal["median", "max"] = "median"
    note: str = ""

    def value(self, proxy: str) -> float | None:
        vals = self.rounds.get(proxy, [])
        if not vals:
            return None
        return max(vals) if self.summary == "max" else median(vals)

    @property
    def compared(self) -> float | None:
        """wsgate against nginx: the median of the rounds' own comparisons when they pair up.

        Each round runs both proxies back to back, so a round's pair saw the same machine; this
        machine's speed drifts by tens of percent from one minute to the next (other tenants),
        and comparing pairs cancels that drift where comparing two medians would not.
        """
        n, w = self.value("nginx"), self.value("wsgate")
        if n is None or w is None or self.check == "abs<":  # nginx's figure is only for reference there
            return None
        ns, ws = self.rounds.get("nginx", []), self.rounds.get("wsgate", [])
        paired = self.summary == "median" and len(ns) == len(ws)
        if self.check == "diff<=":
            return median([b - a for a, b in zip(ns, ws, strict=True)]) if paired else w - n
        if paired and all(ns):
            return median([b / a for a, b in zip(ns, ws, strict=True)])
        return w / n if n else None

    @property
    def passed(self) -> bool | None:
        n, w, c = self.value("nginx"), self.value("wsgate"), self.compared
        if self.check == "ratio>=":
            return None if c is None else c >= self.target
        if self.check == "ratio<=":
            return None if c is None else c <= self.target
        if self.check == "diff<=":
            return None if c is None else c <= self.target
        if self.check == "abs<":
            return None if w is None else w < self.target
        if self.check == "both>=":
            return None if n is None or w is None else min(n, w) >= self.target
        return None

    def target_text(self) -> str:
        t = self.target
        return {
            "ratio>=": f">= {t:.2f}x",
            "ratio<=": f"<= {t:.2f}x",
            "diff<=": f"<= +{t:g} {self.unit}",
            "abs<": f"wsgate < {t:g} {self.unit}",
            "both>=": f"both >= {t:g}",
            "info": "",
        }[self.check]

    def compared_text(self) -> str:
        c = self.compared
        if c is None:
            return "-"
        if self.check == "diff<=":
            return f"{c:+.3f} {self.unit}"
        return f"{c:.2f}x"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "unit": self.unit, "check": self.check, "target": self.target,
            "summary": self.summary, "rounds": self.rounds,
            "nginx": self.value("nginx"), "wsgate": self.value("wsgate"),
            "compared": self.compared, "passed": self.passed, "note": self.note,
        }


@dataclass
class BenchResult:
    name: str
    description: str
    metrics: list[Metric] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def metric(self, name: str, unit: str, check: Check, target: float = 0.0, **kw: object) -> Metric:
        m = Metric(name, unit, check, target, **kw)  # type: ignore[arg-type]
        self.metrics.append(m)
        return m

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "seconds": round(self.seconds, 1),
                "error": self.error, "details": self.details, "metrics": [m.as_dict() for m in self.metrics]}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(results: list[BenchResult]) -> str:
    header = ("benchmark", "metric", "nginx", "wsgate", "wsgate/nginx", "target", "result")
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.error is not None and not r.metrics:
            rows.append((r.name, "-", "-", "-", "-", "-", "ERROR"))
            continue
        for i, m in enumerate(r.metrics):
            passed = m.passed
            verdict = "" if m.check == "info" else ("PASS" if passed else "MISS" if passed is False else "-")
            if r.error is not None:
                verdict = "ERROR"
            label = f"{m.name} ({m.unit})" + (" [max]" if m.summary == "max" else "")
            rows.append((r.name if i == 0 else "", label, fmt(m.value("nginx")), fmt(m.value("wsgate")),
                         m.compared_text(), m.target_text(), verdict))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4}
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
