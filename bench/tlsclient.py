"""TLS handshake load client: every connection is connect + handshake + one request + close.

``python -m bench.tlsclient --port P --host H --duration D [--resume]`` runs ``--threads``
blocking loops (OpenSSL releases the GIL during handshakes) and prints one JSON line with the
counts. Without ``--resume`` every handshake is a full one; with it, each loop offers the newest
session (TLS 1.3 ticket) it got, like a browser, and ``session_reused`` is counted.
Wsgate's wrk-based runs cannot do this: wrk keeps the session of a closed connection and resumes.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass


@dataclass
class Counts:
    done: int = 0
    reused: int = 0
    errors: int = 0
    first_error: str = ""


def read_response(s: ssl.SSLSocket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise ValueError(f"connection closed before the response head ({len(buf)} bytes)")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length < 0:
        raise ValueError("response without Content-Length")
    while len(body) < length:
        data = s.recv(65536)
        if not data:
            raise ValueError("connection closed in the body")
        body += data
    return status, body[:length]


def loop(args: argparse.Namespace, ctx: ssl.SSLContext, measure_from: float, end: float, counts: Counts,
         lock: threading.Lock) -> None:
    req = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
    expect = args.expect.encode()
    session: ssl.SSLSession | None = None
    done = reused = errors = 0
    first_error = ""
    while (now := time.monotonic()) < end:
        try:
            with socket.create_connection(("127.0.0.1", args.port), timeout=10) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=args.host, session=session) as s:
                    s.sendall(req)
                    status, body = read_response(s)
                    if status != 200 or body != expect:
                        raise ValueError(f"unexpected response: {status} {body[:80]!r}")
                    was_reused = bool(s.session_reused)
                    if args.resume:
                        session = s.session
        except (OSError, ssl.SSLError, ValueError) as e:
            if now >= measure_from:
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
            continue
        if now >= measure_from:
            done += 1
            reused += was_reused
    with lock:
        counts.done += done
        counts.reused += reused
        counts.errors += errors
        counts.first_error = counts.first_error or first_error


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tlsclient")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--expect", default="hello")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Throughput of the server is measured, not of certificate verification in the client; the
    # benchmark checks the chain once beforehand.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    counts = Counts()
    lock = threading.Lock()
    start = time.monotonic()
    measure_from = start + args.warmup
    end = measure_from + args.duration
    threads = [threading.Thread(target=loop, args=(args, ctx, measure_from, end, counts, lock))
               for _ in range(args.threads)]
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - measure_from
    print(json.dumps({"done": counts.done, "reused": counts.reused, "errors": counts.errors,
                      "first_error": counts.first_error, "seconds": elapsed,
                      "client_cpu": time.process_time() - cpu}), flush=True)


if __name__ == "__main__":
    main()
