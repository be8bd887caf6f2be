"""Route lookup cost with 10,000 admin rules and 10,000 workspaces against 10 of each.

The issue's target: the per-request latency may not grow by more than 10% when
the gateway holds 10,000 rules and 10,000 workspaces instead of 10. Two levels:

1. lookup only, in this process, no sockets: a ``routing.table.RouteTable`` with
   a ``routing.rules.RuleSet`` and launched workspaces, looked up the way the proxy
   does it (``match`` by Host; for rule hosts ``canonical_target`` then
   ``match_rule``), for a mix of hosts, with the table's host caches warm (a few
   hosts repeating) and cold (every raw Host new, and every host name new
   where the kind of host allows it); plus
   what building the rule set costs (start-up, and every rule change);
2. end to end: two ``wsgate serve`` processes in the same run, one with 10 rules
   and 10 static workspaces, one with 10,000 of each (rules written into the
   document store before start, as the admin API would have stored them), wrk
   small GETs on a public rule host in front of the same upstream nginx, nginx
   proxying that upstream as the speed reference; then the same with every
   request to another host of the set (all 14,000 hosts of the big table);
   full runs also add one rule under load and time the stall of the reload.

Both gateways present the stack's certificate (its local CA is copied into
their state directories): with that certificate a rule host must be one label
under the domain, so the end-to-end rules use exact hosts only; the in-process
tables also hold wildcard patterns (`RuleSet` does not check certificates).

In the summary table the "nginx" column holds the 10-rules figure and the
"wsgate" column the 10,000-rules figure, except on the rows that say "vs nginx".
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from auth.docstore import encode_body
from auth.sqlite import Database
from bench import wrk
from bench.benchmarks import CpuMeter, Options, progress, stack
from bench.report import BenchResult, fmt
from bench.servers import (
    DOMAIN,
    HTTP_HOST,
    SMALL_BODY,
    BenchError,
    Proc,
    Stack,
    child_env,
    free_port,
    gateway_toml_head,
    https_request,
    workspace_entry,
)
from routing.paths import canonical_target
from routing.rules import Rule, RuleContext, RuleSet, parse_rule
from routing.table import _CACHE_MAX, BY_PATH, RouteTable

DESCRIPTION = "route lookup with 10,000 rules + 10,000 workspaces vs 10 + 10: in-process and end to end"

SMALL: Final = 10
BIG: Final = 10_000
LATENCY_TARGET: Final = 1.10  # 10,000 / 10 at most this much slower per request
THROUGHPUT_TARGET: Final = 1 / LATENCY_TARGET
# Path prefixes of the rules of one host: host h has the first 1 + h % 4 of them.
PREFIXES: Final = ("/api", "/app/v2", "/static/assets", "/")
WILDCARD_EVERY: Final = 10  # in-process: every 10th rule host (the 3rd, 13th...) is a wildcard pattern
WS_PORT: Final = 8080
E2E_HOST_INDEX: Final = 3  # the measured rule host: it has all four prefixes
E2E_PATH: Final = "/app/v2/"  # under "/app/v2", stripped to "/" ("hello" from the upstream)
CONNECTIONS: Final = 32
THREADS: Final = 2


# --- the rules and workspaces -----------------------------------------------------------------------


@dataclass
class RulePlan:
    """N rules over hosts with 1-4 path prefixes each; the hosts as lookups will address them."""

    rules: list[Rule] = field(default_factory=list)
    exact: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # host, its prefixes
    wild: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # suffix under "*.", its prefixes


def rule_host(h: int) -> str:
    return f"r{h:05d}.{DOMAIN}"


def make_rules(n: int, upstream: str, *, wildcards: bool, access: str) -> RulePlan:
    plan = RulePlan()
    h = 0
    while len(plan.rules) < n:
        wild = wildcards and h % WILDCARD_EVERY == 2
        host = f"t{h:05d}.{DOMAIN}" if wild else rule_host(h)
        prefixes = PREFIXES[: min(1 + h % len(PREFIXES), n - len(plan.rules))]
        for prefix in prefixes:
            plan.rules.append(Rule(
                id=f"rule-{len(plan.rules):05d}", hosts=(f"*.{host}" if wild else host,), path_prefix=prefix,
                upstream=upstream, access=access, strip_prefix=True,
            ))
        (plan.wild if wild else plan.exact).append((host, prefixes))
        h += 1
    return plan


def workspace_id(i: int) -> str:
    return f"w{i:05d}"


def build_table(rules: int, workspaces: int) -> tuple[RouteTable, RulePlan]:
    table = RouteTable(DOMAIN)
    plan = make_rules(rules, "http://127.0.0.1:9000", wildcards=True, access="authenticated")
    table.set_rules(RuleSet(plan.rules))
    for i in range(workspaces):
        table.set_launched_workspace(
            workspace_id(i), owner=f"github:user{i}",
            public_ports=frozenset({WS_PORT}) if i % 3 == 0 else frozenset(), ide_port=8000 if i % 2 else None,
        )
    return table, plan


# --- 1. lookups in-process --------------------------------------------------------------------------

Key = tuple[bytes, bytes]  # raw Host, raw request-target
KINDS: Final = ("mix", "main domain", "workspace host", "rule host, exact", "rule host, wildcard", "unknown host")
# The mix: how often each kind of host comes (sums to 100).
MIX: Final = (("main domain", 10), ("workspace host", 40), ("rule host, exact", 35), ("rule host, wildcard", 10),
              ("unknown host", 5))
WARM_KEYS: Final = 64  # distinct hosts of the warm runs
PASS_LOOKUPS: Final = _CACHE_MAX // 2  # lookups per timed pass
# Distinct raw Hosts of the cold runs, walked in turn: each was last seen more than a cache's worth of
# lookups ago, so every lookup misses the raw-Host cache (cleared whenever it is full).
COLD_KEYS: Final = 2 * _CACHE_MAX


def _rule_target(rng: random.Random, prefixes: tuple[str, ...]) -> bytes:
    """A path under one of the host's prefixes (1 in 10 under none of them: a 404)."""
    if rng.random() < 0.1:
        return b"/elsewhere/page?x=1"
    prefix = rng.choice(prefixes)
    tail = rng.choice(("", "/", "/items/42", "/a/b/c.js", "/x?q=1"))
    path = (prefix.rstrip("/") + tail) or "/"
    return path.encode()


def make_key(rng: random.Random, kind: str, plan: RulePlan, workspaces: int, new: int | None = None) -> Key:
    """`new` (a number not used before): a host name of its own where the kind allows one (a workspace port,
    a wildcard rule's label, an unknown name), so that the name cache misses too."""
    if kind == "main domain":
        return DOMAIN.encode(), rng.choice((b"/", b"/api/v1/workspaces", b"/auth/login"))
    if kind == "workspace host":
        i = rng.randrange(workspaces)
        if new is not None:
            return f"{1 + new % 65535}-{workspace_id(i)}.ws.{DOMAIN}".encode(), b"/"
        port = rng.choice((WS_PORT, 3000, 5173, 8888))
        label = workspace_id(i) if rng.random() < 0.3 else f"{port}-{workspace_id(i)}"
        return f"{label}.ws.{DOMAIN}".encode(), b"/"
    if kind == "rule host, exact":
        host, prefixes = rng.choice(plan.exact)
        return host.encode(), _rule_target(rng, prefixes)
    if kind == "rule host, wildcard":
        suffix, prefixes = rng.choice(plan.wild)
        label = f"c{new}" if new is not None else rng.choice(("app", "ci", "docs", "x.y"))
        return f"{label}.{suffix}".encode(), _rule_target(rng, prefixes)
    if kind == "unknown host":
        if new is not None:
            return f"nope{new}.{DOMAIN}".encode(), b"/"
        return (f"nope{rng.randrange(1000)}.{DOMAIN}" if rng.random() < 0.7 else "example.org").encode(), b"/"
    raise ValueError(kind)


def make_keys(seed: int, kind: str, plan: RulePlan, workspaces: int, count: int, *, cold: bool) -> list[Key]:
    """`count` lookups of `kind` ("mix": drawn by MIX); cold ones each get their own ":port" so no two raw Hosts
    are equal, and their own name where the kind allows (the same shapes in both setups, whatever the number
    of names there is to draw from)."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    keys = []
    for k in range(count):
        pick = rng.choices(kinds, weights)[0] if kind == "mix" else kind
        host, target = make_key(rng, pick, plan, workspaces, k if cold else None)
        if cold:
            host += b":%d" % (1024 + k)
        keys.append((host, target))
    return keys


def run_lookups(table: RouteTable, keys: list[Key]) -> int:
    """CPU nanoseconds of this thread for looking up every key as the proxy does (ClientConnection._dispatch and
    _rule_route): CPU time, not wall time, so that other processes on the machine count less."""
    match = table.match
    match_rule = table.match_rule
    clock = time.thread_time_ns
    t0 = clock()
    for raw_host, target in keys:
        route = match(raw_host)
        if isinstance(route, int):
            continue
        if route.upstream is BY_PATH:
            path, _query = canonical_target(target)
            match_rule(route.host, path)
    return clock() - t0


@dataclass
class LookupSeries:
    """A table and the keys it is looked up with, walked PASS_LOOKUPS at a time, round and round."""

    table: RouteTable
    keys: list[Key]
    at: int = 0
    ns: list[float] = field(default_factory=list)  # per lookup, one value per timed pass

    def one_pass(self, *, timed: bool = True) -> None:
        chunk = self.keys[self.at : self.at + PASS_LOOKUPS]
        self.at = (self.at + PASS_LOOKUPS) % len(self.keys)
        ns = run_lookups(self.table, chunk)
        if timed:
            self.ns.append(ns / len(chunk))


def rule_set_builds(res: BenchResult) -> list[str]:
    """How long the rule set takes to build: parsing, the index in one go, and as gateway/rules.py Rules.load
    builds it (every stored body through parse_rule, then RuleSet.with_rule one rule at a time)."""
    ctx = RuleContext(domains=(DOMAIN, f"*.{DOMAIN}", f"*.ws.{DOMAIN}"), main_domain=DOMAIN,
                      gateway_addresses=frozenset({"127.0.0.1:8443"}), workspace_exists=lambda _id: True)
    sizes = (SMALL, 1000, BIG)
    figures: dict[int, tuple[float, ...]] = {}
    for n in sizes:
        plan = make_rules(n, "http://127.0.0.1:9000", wildcards=False, access="public")
        bodies = [json.loads(encode_body(r.to_dict())) for r in plan.rules]
        gc.collect()
        t0 = time.perf_counter()
        parsed = [parse_rule(body, ctx) for body in bodies]
        t1 = time.perf_counter()
        RuleSet(parsed)
        t2 = time.perf_counter()
        full = RuleSet()
        for rule in parsed:
            full = full.with_rule(rule)
        t3 = time.perf_counter()
        extra = make_rules(n + 1, "http://127.0.0.1:9000", wildcards=False, access="public").rules[-1]
        one = []
        for _ in range(5):
            t4 = time.perf_counter()
            full.with_rule(extra)
            one.append(time.perf_counter() - t4)
        figures[n] = (t1 - t0, t2 - t1, t3 - t2, (t1 - t0) + (t3 - t2), min(one))
    head = ("rule set of N rules (exact hosts), wall ms", *(f"N={n:,}" for n in sizes), f"{BIG:,} / {SMALL}")
    rows = []
    for i, label in enumerate(("parse_rule of every stored body",
                               "RuleSet(parsed): the index in one go",
                               "RuleSet.with_rule one rule at a time",
                               "Rules.load: parse_rule + with_rule each (event loop)",
                               "one more rule: RuleSet.with_rule on the set")):
        rows.append((label, *(f"{figures[n][i] * 1e3:,.3f}" for n in sizes),
                     f"{figures[BIG][i] / figures[SMALL][i]:,.0f}x"))
    m = res.metric("rule set rebuilt whole (start-up, > 64 changes)", "ms", "info")
    m.rounds["nginx"].append(figures[SMALL][3] * 1e3)
    m.rounds["wsgate"].append(figures[BIG][3] * 1e3)
    return table_lines(head, rows)


def lookups(opts: Options, res: BenchResult) -> None:
    passes = 6 if opts.quick else 30
    progress(f"lookup only: building tables ({SMALL} rules + {SMALL} launched workspaces, {BIG:,} rules + {BIG:,} "
             f"launched workspaces)")
    gc.collect()
    gc_before, objects_before = _full_gc()
    tables = {SMALL: build_table(SMALL, SMALL)}
    gc_small, objects_small = _full_gc()
    tables[BIG] = build_table(BIG, BIG)
    gc_big, objects_big = _full_gc()
    for n, (table, plan) in tables.items():
        progress(f"  N={n:,}: {len(table.rules):,} rules on {len(plan.exact):,} exact hosts and {len(plan.wild):,} "
                 f"wildcard patterns, {n:,} launched workspaces")
    series: dict[tuple[str, str, int], LookupSeries] = {}
    for kind_no, kind in enumerate(KINDS):
        for n, (table, plan) in tables.items():
            warm = make_keys(kind_no, kind, plan, n, WARM_KEYS, cold=False)
            series[kind, "warm", n] = LookupSeries(table, warm * (PASS_LOOKUPS // WARM_KEYS))
            series[kind, "cold", n] = LookupSeries(table, make_keys(100 + kind_no, kind, plan, n, COLD_KEYS,
                                                                    cold=True))
    # Untimed passes first, so that every cache (the table's, the CPU's) is in its steady state; then
    # interleaved passes, alternating the order of the two tables.
    for s in series.values():
        s.one_pass(timed=False)
    # The collector is off while timing: what a collection costs depends on everything else in the process (a
    # gateway holds far more objects than this one), so it is reported on its own, below and end to end.
    gc.collect()
    gc.disable()
    try:
        for p in range(passes):
            for kind in KINDS:
                for mode in ("warm", "cold"):
                    for n in (SMALL, BIG) if p % 2 == 0 else (BIG, SMALL):
                        series[kind, mode, n].one_pass()
                gc.collect()
    finally:
        gc.enable()
    med = statistics.median
    head = ("CPU ns per lookup: median (min) of passes", f"warm {SMALL}", f"warm {BIG:,}", "ratio",
            f"cold {SMALL}", f"cold {BIG:,}", "ratio")
    rows = []
    for kind in KINDS:
        row = [kind]
        for mode in ("warm", "cold"):
            a, b = series[kind, mode, SMALL].ns, series[kind, mode, BIG].ns
            row += [f"{med(a):,.0f} ({min(a):,.0f})", f"{med(b):,.0f} ({min(b):,.0f})",
                    f"{med(b) / med(a):.2f}x ({min(b) / min(a):.2f}x)"]
        rows.append(tuple(row))
    lines = [f"lookup only: RouteTable.match(Host), and for rule hosts canonical_target + match_rule, as the proxy "
             f"does; {PASS_LOOKUPS:,} lookups per pass, {passes} passes interleaved, thread CPU time; warm = "
             f"{WARM_KEYS} distinct hosts repeating (host cache hits), cold = {COLD_KEYS:,} distinct raw Hosts, each "
             f"with its own ':port', walked in turn (every lookup misses the {_CACHE_MAX:,}-entry raw-Host cache, "
             "which is cleared whenever full), and for workspace, wildcard and unknown hosts each with a name of "
             "its own (a miss in the name cache too: the whole lookup); mix = " + ", ".join(f"{k} {w}%" for k, w in MIX)
             + "; 1 in 10 rule lookups has a path under no rule (404); the loop itself is included; garbage collector "
             "off while timing (collections between passes)"]
    lines += table_lines(head, rows)
    lines.append("")
    lines += rule_set_builds(res)
    lines.append("")
    lines.append(f"full gc.collect() in this process: {gc_before:.1f} ms before any table ({objects_before:,} "
                 f"objects), {gc_small:.1f} ms with the {SMALL}-rule table ({objects_small:,}), {gc_big:.1f} ms with "
                 f"the {BIG:,}-rule table too ({objects_big:,}): every full collection in a gateway with {BIG:,} rules "
                 f"and workspaces walks about {objects_big - objects_small:,} more objects")
    for line in lines:
        progress(line)
    res.details += lines
    for mode in ("warm", "cold"):
        m = res.metric(f"lookup, mix, host cache {mode}", "ns", "ratio<=", LATENCY_TARGET)
        m.rounds["nginx"] = list(series["mix", mode, SMALL].ns)
        m.rounds["wsgate"] = list(series["mix", mode, BIG].ns)
    for mode in ("warm", "cold"):
        m = res.metric(f"lookup, rule host exact, {mode}", "ns", "info")
        m.rounds["nginx"] = list(series["rule host, exact", mode, SMALL].ns)
        m.rounds["wsgate"] = list(series["rule host, exact", mode, BIG].ns)


def _full_gc() -> tuple[float, int]:
    """Wall ms of the fastest of three full collections, and the number of objects the collector tracks."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, len(gc.get_objects())


def table_lines(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = []
    for n, row in enumerate([head, *rows]):
        out.append("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                    for i, c in enumerate(row)).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out


# --- 2. end to end ----------------------------------------------------------------------------------


@dataclass
class Gateway:
    label: str
    rules: int
    workspaces: int
    plan: RulePlan
    proc: Proc
    port: int
    start_s: float
    workdir: Path

    @property
    def host(self) -> str:
        return rule_host(E2E_HOST_INDEX)


def gateway_toml(state: Path, port: int, workers: int, workspaces: int, upstream_port: int) -> str:
    spaces = "".join(workspace_entry(workspace_id(i), WS_PORT, upstream_port) for i in range(workspaces))
    return gateway_toml_head(state, port, workers) + "[launcher]\nenabled = false\n\n" + spaces


async def store_rules(db_path: Path, rules: list[Rule]) -> None:
    """The rules as the admin API stores them (kind "rule", body Rule.to_dict(), version 1), generation bumped."""
    db = Database(db_path)
    try:
        await db.open()

        def fill(c: sqlite3.Connection) -> None:
            now = time.time()
            rows = [(r.id, encode_body(r.to_dict()), now) for r in rules]
            c.executemany("INSERT INTO docs (kind, id, body, version, updated) VALUES ('rule', ?, ?, 1, ?)", rows)
            c.execute("INSERT INTO generations (kind, n) VALUES ('rule', ?) "
                      "ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n", (len(rules),))

        await db.run(fill)
    finally:
        await db.close()


def start_gateway(opts: Options, st: Stack, label: str, n: int) -> Gateway:
    workdir = opts.rundir / "routing" / label
    state = workdir / "state"
    workdir.mkdir(parents=True, exist_ok=True)
    plan = make_rules(n, f"http://127.0.0.1:{st.upstream_port}", wildcards=False, access="public")
    asyncio.run(store_rules(state / "wsgate.db", plan.rules))
    # The stack's CA and leaf: both wsgates and nginx present the same certificate.
    shutil.copytree(st.state_dir / "ca", state / "ca")
    port = free_port()
    conf = workdir / "wsgate.toml"
    conf.write_text(gateway_toml(state, port, opts.workers, n, st.upstream_port))
    script = Path(sys.executable).with_name("wsgate")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    t0 = time.monotonic()
    proc = Proc(f"wsgate-{label}", [*argv, "serve", "--config", str(conf)], workdir / "wsgate.log", env=child_env(),
                cwd=workdir)
    deadline = t0 + 180
    last = ""
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            resp = https_request(port, DOMAIN, "/readyz", timeout=5)
            if resp.status == 200:
                return Gateway(label, n, n, plan, proc, port, time.monotonic() - t0, workdir)
            last = f"status {resp.status}"
        except (OSError, ValueError, BenchError) as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"wsgate-{label} not ready after 180s ({last}); output:\n{proc.tail()}")


def check_gateway(st: Stack, gw: Gateway) -> None:
    """Every stored rule was applied; the measured host, the last rule host and a workspace answer 'hello'."""
    skipped = gw.proc.log.read_text(errors="replace").count("rule not applied")
    if skipped:
        raise BenchError(f"wsgate-{gw.label}: {skipped} stored rules were not applied:\n{gw.proc.tail()}")
    last_host, last_prefixes = gw.plan.exact[-1]
    probes = [(gw.host, E2E_PATH, 200), (last_host, last_prefixes[-1].rstrip("/") + "/", 200),
              (f"{WS_PORT}-{workspace_id(gw.workspaces - 1)}.ws.{DOMAIN}", "/", 200),
              (rule_host(len(gw.plan.exact) + 5), "/", 404)]
    for host, path, status in probes:
        resp = https_request(gw.port, host, path, ca=st.ca)
        if resp.status != status or (status == 200 and resp.body != SMALL_BODY):
            raise BenchError(f"wsgate-{gw.label}: GET https://{host}{path} answered {resp.status} "
                             f"{resp.body[:80]!r}, expected {status}")


def many_hosts_script(workdir: Path, gw: Gateway) -> Path:
    """A wrk script sending each request to the next (host, path) of the gateway's rules and workspaces, shuffled;
    each wrk thread starts at another place in the list."""
    pairs = [(host, prefix.rstrip("/") + "/") for host, prefixes in gw.plan.exact for prefix in prefixes]
    pairs += [(f"{WS_PORT}-{workspace_id(i)}.ws.{DOMAIN}", "/") for i in range(gw.workspaces)]
    random.Random(7).shuffle(pairs)
    entries = ",\n".join(f'  {{"{h}", "{p}"}}' for h, p in pairs)
    script = workdir / "many-hosts.lua"
    script.write_text(
        f"local pairs = {{\n{entries}\n}}\n"
        "local n = #pairs\nlocal threads = 0\nlocal reqs = {}\nlocal i = 0\n"
        "function setup(thread)\n  thread:set('first', threads * 7919)\n  threads = threads + 1\nend\n"
        "function init(args)\n"
        "  for k = 1, n do\n"
        "    reqs[k] = wrk.format('GET', pairs[k][2], {['Host'] = pairs[k][1]})\n"
        "  end\n"
        "  i = first % n\n"
        "end\n"
        "function request()\n  i = i % n + 1\n  return reqs[i]\nend\n"
    )
    return script


def run_wrk(url: str, host: str, duration: float, script: Path | None) -> wrk.WrkResult:
    if script is None:
        return wrk.run(url, host, connections=CONNECTIONS, threads=THREADS, duration=duration, latency=True)
    argv = [wrk.WRK, "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{max(1, round(duration))}s",
            "--timeout", "5s", "--latency", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return wrk.parse(proc.stdout)


@dataclass
class Side:
    """One proxy setup under wrk: where to send, and what it measured."""

    name: str
    proc: Proc
    url: str
    host: str
    script: Path | None = None
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def schedule(opts: Options) -> tuple[int, float]:
    """(rounds, seconds per round): the run's wrk time per side, in rounds of about 3 s. The load that others put
    on the machine drifts over tens of seconds; short rounds, alternating, let both setups see the same."""
    split = max(1, round(opts.duration / 3))
    return opts.rounds * split, opts.duration / split


def measure(opts: Options, sides: list[Side], title: str, *, warmup: bool = True) -> None:
    rounds, duration = schedule(opts)
    for side in sides if warmup else ():
        check(side, run_wrk(side.url, side.host, opts.warmup, side.script))
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            meter = CpuMeter(side.proc.pid)
            out = run_wrk(side.url, side.host, duration, side.script)
            used = meter.stop()
            check(side, out)
            side.rps.append(out.rps)
            side.p50.append(out.latency_ms["50"])
            side.p99.append(out.latency_ms["99"])
            side.cpu_us.append(used / out.requests * 1e6)
            progress(f"{title} round {r + 1}/{rounds} {side.name:13}: {out.rps:,.0f} req/s, "
                     f"p50 {out.latency_ms['50']:.3f} ms, p99 {out.latency_ms['99']:.3f} ms, "
                     f"proxy CPU {used:.2f}s ({side.cpu_us[-1]:.1f} us/request)")


def check(side: Side, out: wrk.WrkResult) -> None:
    side.proc.check_alive()
    if out.errors or out.requests == 0:
        raise BenchError(f"{side.name}: wrk saw {out.non_2xx} non-2xx/3xx responses and socket errors "
                         f"{out.socket_errors} in {out.requests} requests:\n{out.output}\n{side.proc.tail()}")


# --- a rule change under load (full runs only) -------------------------------------------------------

CHANGE_HOST: Final = f"changed.{DOMAIN}"
_MAX_LATENCY = re.compile(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s", re.M)


@dataclass
class ChangeResult:
    rps: float
    p99: float
    max_ms: float
    visible_s: float  # from the write to the first 200 from the new rule's host
    errors: int


async def store_one_rule(db_path: Path, rule: Rule) -> None:
    """One more rule document and its generation bump, as a PUT through the admin API would write them."""
    db = Database(db_path)
    try:
        def put(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO docs (kind, id, body, version, updated) VALUES ('rule', ?, ?, 1, ?)",
                      (rule.id, encode_body(rule.to_dict()), time.time()))
            c.execute("INSERT INTO generations (kind, n) VALUES ('rule', 1) "
                      "ON CONFLICT (kind) DO UPDATE SET n = n + 1")

        await db.run(put)
    finally:
        await db.close()


def rule_change(opts: Options, st: Stack, gw: Gateway) -> ChangeResult:
    """wrk on the measured rule host while one rule is added a third of the way in: the gateway's poll picks the
    change up (every 0.5 s) and Rules.load applies it to the loaded set (reading and parsing that rule only)."""
    duration = max(8.0, opts.duration)
    argv = [wrk.WRK, "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{round(duration)}s", "--timeout", "30s",
            "-H", f"Host: {gw.host}", "--latency", f"https://127.0.0.1:{gw.port}{E2E_PATH}"]
    rule = Rule(id="rule-changed", hosts=(CHANGE_HOST,), path_prefix="/", upstream=f"http://127.0.0.1:{st.upstream_port}",
                access="public", strip_prefix=True)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        time.sleep(duration / 3)
        t0 = time.monotonic()
        asyncio.run(store_one_rule(gw.workdir / "state" / "wsgate.db", rule))
        visible = float("nan")
        while time.monotonic() - t0 < duration:
            try:
                if https_request(gw.port, CHANGE_HOST, "/", timeout=30).status == 200:
                    visible = time.monotonic() - t0
                    break
            except (OSError, BenchError):
                pass
            time.sleep(0.02)
        output, _ = proc.communicate(timeout=duration + 60)
    gw.proc.check_alive()
    out = wrk.parse(output)
    top = _MAX_LATENCY.search(output)
    max_ms = float(top.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[top.group(2)] if top else float("nan")
    return ChangeResult(out.rps, out.latency_ms["99"], max_ms, visible, out.errors)


@contextmanager
def gateways(opts: Options, st: Stack) -> Iterator[dict[int, Gateway]]:
    started: dict[int, Gateway] = {}
    try:
        for n in (SMALL, BIG):
            progress(f"starting wsgate with {n:,} rules and {n:,} static workspaces")
            started[n] = start_gateway(opts, st, f"{n}", n)
            check_gateway(st, started[n])
            progress(f"  ready after {started[n].start_s:.2f}s ({len(started[n].plan.exact):,} rule hosts)")
        yield started
    finally:
        for gw in started.values():
            gw.proc.stop()


def fits(hosts: int) -> str:
    if hosts <= _CACHE_MAX:
        return f"all in its {_CACHE_MAX:,}-entry host caches once seen"
    return f"more than its {_CACHE_MAX:,} cache entries: misses"


def end_to_end(opts: Options, res: BenchResult) -> None:
    with stack(opts, res.name) as st, gateways(opts, st) as gws:
        small, big = gws[SMALL], gws[BIG]
        resp = https_request(st.ports["nginx"], HTTP_HOST, "/", ca=st.ca)
        if resp.status != 200 or resp.body != SMALL_BODY:
            raise BenchError(f"nginx: GET / answered {resp.status} {resp.body[:80]!r}")
        sides: dict[str | int, Side] = {
            "nginx": Side("nginx", st.procs["nginx"], f"https://127.0.0.1:{st.ports['nginx']}/", HTTP_HOST),
            SMALL: Side(f"wsgate {SMALL}", small.proc, f"https://127.0.0.1:{small.port}{E2E_PATH}", small.host),
            BIG: Side(f"wsgate {BIG:,}", big.proc, f"https://127.0.0.1:{big.port}{E2E_PATH}", big.host),
        }
        seconds = max(1, round(schedule(opts)[1]))
        one_host = (f"one rule host: wrk {CONNECTIONS} connections {THREADS} threads --latency, "
                    f"{seconds}s per round, GET {E2E_PATH} on {small.host} (public rule, prefix "
                    f"/app/v2 of 4 on that host, strip_prefix: the upstream sees GET /); nginx: GET / on {HTTP_HOST}")
        progress(one_host)
        measure(opts, list(sides.values()), "one host")
        many = {n: Side(f"wsgate {n:,}", gw.proc, f"https://127.0.0.1:{gw.port}/", "",
                        many_hosts_script(gw.workdir, gw)) for n, gw in gws.items()}
        many_text = (f"many hosts: the same wrk, each request to the next of every (rule host, prefix) and "
                     f"workspace host of the gateway, shuffled: {SMALL} rules + {SMALL} workspaces = "
                     f"{len(small.plan.exact) + SMALL} hosts (all in the host cache) vs {BIG:,} + {BIG:,} = "
                     f"{len(big.plan.exact) + BIG:,} hosts ({fits(len(big.plan.exact) + BIG)})")
        progress(many_text)
        # No warm-up: the gateways are warm from the runs above.
        measure(opts, list(many.values()), "many hosts", warmup=False)
        changes: dict[int, ChangeResult] = {}
        if not opts.quick:
            progress(f"rule change under load (full runs only): wrk on {small.host} as above, one rule added "
                     "a third of the way in")
            for n in (SMALL, BIG):
                changes[n] = c = rule_change(opts, st, gws[n])
                progress(f"  wsgate {n:,}: {c.rps:,.0f} req/s, p99 {c.p99:.1f} ms, max {c.max_ms:,.1f} ms, new rule "
                         f"answering {c.visible_s:.2f}s after the write, {c.errors} errors")
        report(res, opts, sides, many, gws, one_host, many_text, changes)


def report(res: BenchResult, opts: Options, sides: dict[str | int, Side], many: dict[int, Side],
           gws: dict[int, Gateway], one_host: str, many_text: str, changes: dict[int, ChangeResult]) -> None:
    med = statistics.median
    rounds, duration = schedule(opts)
    lines = [f"end to end, medians of {rounds} interleaved rounds of {duration:.3g}s (order reversed every round), "
             f"{opts.workers} worker(s) per proxy"]
    head = ("", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req")
    for title, group, text in (("one rule host", sides, one_host), ("many hosts", many, many_text)):
        lines.append(text)
        rows = [(s.name, fmt(med(s.rps)), f"{med(s.p50):.3f}", f"{med(s.p99):.3f}", f"{med(s.cpu_us):.1f}")
                for s in group.values()]
        a, b = group[SMALL], group[BIG]
        rows.append((f"{title}: {BIG:,} / {SMALL}", f"{med(b.rps) / med(a.rps):.3f}x",
                     f"{med(b.p50) / med(a.p50):.3f}x", f"{med(b.p99) / med(a.p99):.3f}x",
                     f"{med(b.cpu_us) / med(a.cpu_us):.3f}x"))
        lines += table_lines(head, rows)
        rps = [y / x for x, y in zip(a.rps, b.rps, strict=True)]
        cpu = [y / x for x, y in zip(a.cpu_us, b.cpu_us, strict=True)]
        lines.append(f"  {BIG:,} / {SMALL} round by round: req/s " + " ".join(f"{x:.2f}" for x in rps)
                     + f" (median {med(rps):.3f}); proxy CPU per request " + " ".join(f"{x:.2f}" for x in cpu)
                     + f" (median {med(cpu):.3f})")
    lines.append(f"gateway start to /readyz: {gws[SMALL].start_s:.2f}s with {SMALL} rules + {SMALL} workspaces, "
                 f"{gws[BIG].start_s:.2f}s with {BIG:,} + {BIG:,}")
    if changes:
        lines.append(f"rule change under load: one more rule document written (as a PUT /api/v1/routes/<id> would) "
                     f"while wrk ran {max(8.0, opts.duration):g}s on the measured host; the gateway polls the "
                     "generation every 0.5 s and Rules.load applies the one changed rule to the set it holds")
        change_rows = [(f"wsgate {n:,}", fmt(c.rps), f"{c.p99:,.1f}", f"{c.max_ms:,.1f}", f"{c.visible_s:.2f}",
                        str(c.errors)) for n, c in changes.items()]
        lines += table_lines(("", "req/s", "p99 ms", "max ms", "new rule after s", "errors"), change_rows)
    for line in lines:
        progress(line)
    res.details += lines

    def put(name: str, unit: str, check: str, target: float, a: list[float], b: list[float]) -> None:
        m = res.metric(name, unit, check, target)  # type: ignore[arg-type]
        m.rounds["nginx"], m.rounds["wsgate"] = list(a), list(b)

    one, lots = sides, many
    put("one rule host", "req/s", "ratio>=", THROUGHPUT_TARGET, one[SMALL].rps, one[BIG].rps)
    put("one rule host, latency p50", "ms", "ratio<=", LATENCY_TARGET, one[SMALL].p50, one[BIG].p50)
    put("one rule host, latency p99", "ms", "info", 0.0, one[SMALL].p99, one[BIG].p99)
    put("one rule host, proxy CPU per request", "us", "ratio<=", LATENCY_TARGET, one[SMALL].cpu_us, one[BIG].cpu_us)
    put("many hosts", "req/s", "ratio>=", THROUGHPUT_TARGET, lots[SMALL].rps, lots[BIG].rps)
    put("many hosts, latency p50", "ms", "ratio<=", LATENCY_TARGET, lots[SMALL].p50, lots[BIG].p50)
    put("many hosts, latency p99", "ms", "info", 0.0, lots[SMALL].p99, lots[BIG].p99)
    put("many hosts, proxy CPU per request", "us", "ratio<=", LATENCY_TARGET, lots[SMALL].cpu_us, lots[BIG].cpu_us)
    put("gateway start to /readyz", "s", "info", 0.0, [gws[SMALL].start_s], [gws[BIG].start_s])
    if changes:
        put("rule change under load, max latency", "ms", "info", 0.0, [changes[SMALL].max_ms], [changes[BIG].max_ms])
    m = res.metric(f"one rule host, wsgate {SMALL} rules vs nginx", "req/s", "info")
    m.rounds["nginx"], m.rounds["wsgate"] = list(one["nginx"].rps), list(one[SMALL].rps)


# --- the benchmark ----------------------------------------------------------------------------------


def routing(opts: Options, res: BenchResult) -> None:
    res.details.append(f"summary table, routing rows: 'nginx' = {SMALL} rules + {SMALL} workspaces, 'wsgate' = "
                       f"{BIG:,} rules + {BIG:,} workspaces, ratio = {BIG:,} / {SMALL}; except the row "
                       "'vs nginx' (nginx proxying the same upstream, the speed reference)")
    lookups(opts, res)
    end_to_end(opts, res)
