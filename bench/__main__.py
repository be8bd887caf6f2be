"""``python -m bench``: runs the benchmarks, prints the comparison table, optionally writes JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

from bench import launcher, routing
from bench.benchmarks import BENCHMARKS, Options
from bench.report import BenchResult, fmt, table
from bench.servers import NGINX, REPO, BenchError, child_env, stop_all
from bench.wrk import WRK

BENCHMARKS["launcher"] = (launcher.DESCRIPTION, launcher.launcher)
BENCHMARKS["routing"] = (routing.DESCRIPTION, routing.routing)


# Where the `gateway` package a wsgate process imports comes from, and whether its hot path is compiled.
_WHERE = (
    "import gateway, pathlib; print(f'code in {pathlib.Path(gateway.__file__).resolve().parent.parent}; hot path '"
    " + ('compiled' if gateway.hot_path_compiled() else 'interpreted'))"
)


def _cmd(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (proc.stdout.strip() or proc.stderr.strip()).splitlines()[0] if (proc.stdout or proc.stderr) else ""


def environment() -> dict[str, str]:
    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    commit = _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "nginx": _cmd([NGINX, "-v"]),
        "wrk": _cmd([WRK, "-v"]).split(" [")[0],
        "curl": _cmd(["curl", "--version"]).split(" (")[0],
        "openssl": _cmd(["openssl", "version"]),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        # As the benchmark's wsgate processes run: this repository's code (child_env), compiled or not.
        "wsgate": f"{pkg('wsgate')} (commit {commit}{', modified tree' if dirty else ''}; "
                  f"{_cmd([sys.executable, '-c', _WHERE], env=child_env())})",
        "uvloop": pkg("uvloop"),
        "nofile limit": " / ".join(str(x) for x in __import__("resource").getrlimit(
            __import__("resource").RLIMIT_NOFILE)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark wsgate against nginx (same certificate, same upstreams, same run, interleaved "
        "rounds, medians).",
    )
    p.add_argument("--quick", action="store_true", help="shorter rounds, fewer connections (about 2 minutes)")
    p.add_argument("--only", metavar="NAME,...", help="run only these: " + ", ".join(BENCHMARKS))
    p.add_argument("--workers", type=int, default=1, help="worker processes of each proxy (tls_resumed uses >= 2)")
    p.add_argument("--json", metavar="FILE", help="write all results (every round) to FILE")
    p.add_argument("--rounds", type=int, help="rounds per comparison (default 5, --quick 2)")
    p.add_argument("--duration", type=float, help="seconds per wrk round (default 6, --quick 3)")
    p.add_argument("--idle-conns", type=int, help="idle WebSockets per proxy (default 5000, --quick 1000)")
    p.add_argument("--stream-mib", type=int, help="MiB downloaded and uploaded in streaming (default 1024)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p.parse_args(argv)


def options(args: argparse.Namespace, rundir: Path) -> Options:
    quick = args.quick
    # More, shorter rounds rather than a few long ones: pairs close in time see the same machine.
    rounds = args.rounds or (2 if quick else 5)
    duration = args.duration or (3.0 if quick else 6.0)
    return Options(
        quick=quick,
        rounds=rounds,
        duration=duration,
        client_duration=min(duration, 3.0 if quick else 8.0),
        warmup=1.0 if quick else 2.0,
        workers=args.workers,
        ws_conns=64,
        client_procs=2,
        idle_conns=args.idle_conns or (1000 if quick else 5000),
        idle_rounds=min(rounds, 3) if not quick else 1,
        idle_procs=4,
        stream_mib=args.stream_mib or 1024,
        stream_rounds=1 if quick else 2,
        rundir=rundir,
        state_dir=rundir / "state",
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (desc, _) in BENCHMARKS.items():
            print(f"{name:16} {desc}")
        return 0
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
    for tool in (NGINX, WRK, shutil.which("curl") or "/usr/bin/curl"):
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}: install the Debian packages nginx, wrk and curl", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    env = environment()
    print("wsgate benchmarks: wsgate vs nginx, same run, same certificate and upstreams")
    for key, value in env.items():
        print(f"  {key:13} {value}")
    rundir = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
    # nginx workers run as an unprivileged user: they must reach the files and temp dirs inside.
    rundir.chmod(0o755)
    opts = options(args, rundir)
    print(f"  {'options':13} {'quick' if opts.quick else 'full'}: {opts.rounds} interleaved rounds, "
          f"{opts.duration:g}s per wrk round, {opts.client_duration:g}s per client round, workers {opts.workers}, "
          f"{opts.idle_conns} idle WebSockets, {opts.stream_mib} MiB streamed")
    print(f"  {'work dir':13} {rundir}{' (kept)' if args.keep else ''}")
    print(flush=True)

    results: list[BenchResult] = []
    started = time.monotonic()
    interrupted = False
    try:
        for name in names:
            desc, fn = BENCHMARKS[name]
            res = BenchResult(name, desc)
            results.append(res)
            print(f"== {name}: {desc}", flush=True)
            t0 = time.monotonic()
            try:
                fn(opts, res)
            except BenchError as e:
                res.error = str(e)
            except KeyboardInterrupt:
                res.error = "interrupted"
                raise
            except Exception as e:
                res.error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            finally:
                res.seconds = time.monotonic() - t0
            if res.error:
                print(f"    ERROR: {res.error}", flush=True)
            print(f"    ({res.seconds:.0f}s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every server", flush=True)
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)

    total = time.monotonic() - started
    print()
    print(table(results))
    for res in results:
        if res.details:
            print(f"\n{res.name}:")
            for line in res.details:
                print(f"  {line}")
        for m in res.metrics:
            rounds = "; ".join(f"{p} " + (", ".join(fmt(v) for v in vals) or "-") for p, vals in m.rounds.items())
            print(f"  rounds, {m.name} ({m.unit}): {rounds}")
        if res.error:
            print(f"  ERROR: {res.error}")
    print(f"\ntotal {total:.0f}s; nginx and wsgate columns are medians of the rounds; wsgate/nginx is the median "
          "of each round's own ratio (a round runs both back to back, the order alternating), which cancels the "
          "machine's drift between rounds; latency compares p50 in ms; [max] = worst round.\n"
          "'proxy CPU per ...' is the CPU time of all the proxy's processes divided by the work done: less "
          "sensitive than rates to the load others put on the machine, and the better guide where the client "
          "saturates first.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "environment": env,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
            "seconds": round(total, 1),
            "interrupted": interrupted,
            "benchmarks": [r.as_dict() for r in results],
        }, indent=2) + "\n")
        print(f"results written to {args.json}")
    if interrupted:
        return 130
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
