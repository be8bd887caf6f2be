"""Prometheus text-format metrics, kept as plain counters on the request path.

Each worker keeps its own numbers; with several workers the supervisor sums
the snapshots they send it (see gateway.server).
"""

from __future__ import annotations

import gc
from collections import defaultdict
from typing import Any, Final

# Request latency buckets in seconds.
BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)


class Metrics:
    __slots__ = (
        "auth_checks",
        "latency_counts",
        "latency_sum",
        "open_connections",
        "open_websockets",
        "requests",
        "tls_handshakes",
        "upstream_errors",
        "websockets_total",
    )

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.latency_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)
        self.tls_handshakes: defaultdict[str, int] = defaultdict(int)
        self.open_connections = 0
        self.open_websockets = 0
        self.websockets_total = 0
        # Requests to private hosts by how their session was checked: "cache" or "store".
        self.auth_checks: defaultdict[str, int] = defaultdict(int)

    def observe(self, kind: str, status: int, seconds: float) -> None:
        self.requests[(kind, status)] += 1
        # The first bucket that holds it (bisect_left); compiled, a scan that usually stops at the
        # first bucket costs less than a call into the bisect module.
        i = 0
        for bound in BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.latency_counts[i] += 1
        self.latency_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[k, s, n] for (k, s), n in self.requests.items()],
            "latency_counts": list(self.latency_counts),
            "latency_sum": self.latency_sum,
            "upstream_errors": dict(self.upstream_errors),
            "tls_handshakes": dict(self.tls_handshakes),
            "open_connections": self.open_connections,
            "open_websockets": self.open_websockets,
            "websockets_total": self.websockets_total,
            "auth_checks": dict(self.auth_checks),
            # Per generation: runs of the cyclic collector and the objects it freed. Reference
            # cycles left by each connection or request show up here as a rate.
            "gc": [[g["collections"], g["collected"]] for g in gc.get_stats()],
        }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = Metrics().snapshot()
    total["gc"] = [[0, 0] for _ in total["gc"]]
    req: defaultdict[tuple[str, int], int] = defaultdict(int)
    for snap in snapshots:
        for k, s, n in snap["requests"]:
            req[(k, s)] += n
        total["latency_counts"] = [a + b for a, b in zip(total["latency_counts"], snap["latency_counts"], strict=True)]
        total["latency_sum"] += snap["latency_sum"]
        for key in ("upstream_errors", "tls_handshakes", "auth_checks"):
            for name, n in snap.get(key, {}).items():
                total[key][name] = total[key].get(name, 0) + n
        for key in ("open_connections", "open_websockets", "websockets_total"):
            total[key] += snap[key]
        for mine, theirs in zip(total["gc"], snap["gc"], strict=True):
            mine[0] += theirs[0]
            mine[1] += theirs[1]
    total["requests"] = [[k, s, n] for (k, s), n in req.items()]
    return total


def render(snap: dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4."""
    out = [
        "# HELP wsgate_requests_total Requests answered, by route kind and status.",
        "# TYPE wsgate_requests_total counter",
    ]
    for kind, status, n in sorted(snap["requests"]):
        out.append(f'wsgate_requests_total{{kind="{kind}",status="{status}"}} {n}')
    out += [
        "# HELP wsgate_request_duration_seconds Time from request head to end of response.",
        "# TYPE wsgate_request_duration_seconds histogram",
    ]
    cumulative = 0
    for bound, n in zip((*BUCKETS, float("inf")), snap["latency_counts"], strict=True):
        cumulative += n
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'wsgate_request_duration_seconds_bucket{{le="{le}"}} {cumulative}')
    out.append(f"wsgate_request_duration_seconds_sum {snap['latency_sum']}")
    out.append(f"wsgate_request_duration_seconds_count {cumulative}")
    out += [
        "# HELP wsgate_upstream_errors_total Failed upstream exchanges, by reason.",
        "# TYPE wsgate_upstream_errors_total counter",
    ]
    for reason, n in sorted(snap["upstream_errors"].items()):
        out.append(f'wsgate_upstream_errors_total{{reason="{reason}"}} {n}')
    out += [
        "# HELP wsgate_tls_handshakes_total Completed TLS handshakes, by whether the session was resumed.",
        "# TYPE wsgate_tls_handshakes_total counter",
    ]
    for kind, n in sorted(snap["tls_handshakes"].items()):
        out.append(f'wsgate_tls_handshakes_total{{session="{kind}"}} {n}')
    out += [
        "# HELP wsgate_auth_checks_total Requests to private hosts, by where their credentials were checked.",
        "# TYPE wsgate_auth_checks_total counter",
    ]
    for source, n in sorted(snap.get("auth_checks", {}).items()):
        out.append(f'wsgate_auth_checks_total{{source="{source}"}} {n}')
    out += [
        "# HELP wsgate_open_connections Client connections open now.",
        "# TYPE wsgate_open_connections gauge",
        f"wsgate_open_connections {snap['open_connections']}",
        "# HELP wsgate_open_websockets Proxied WebSockets open now.",
        "# TYPE wsgate_open_websockets gauge",
        f"wsgate_open_websockets {snap['open_websockets']}",
        "# HELP wsgate_websockets_total Proxied WebSockets opened.",
        "# TYPE wsgate_websockets_total counter",
        f"wsgate_websockets_total {snap['websockets_total']}",
        "# HELP python_gc_collections_total Runs of Python's cyclic garbage collector, by generation.",
        "# TYPE python_gc_collections_total counter",
    ]
    gens = list(enumerate(snap["gc"]))
    out += [f'python_gc_collections_total{{generation="{g}"}} {runs}' for g, (runs, _) in gens]
    out += [
        "# HELP python_gc_objects_collected_total Objects freed by Python's cyclic garbage collector, by generation.",
        "# TYPE python_gc_objects_collected_total counter",
    ]
    out += [f'python_gc_objects_collected_total{{generation="{g}"}} {freed}' for g, (_, freed) in gens]
    return "\n".join(out) + "\n"
