"""Structured logs: one event a line, JSON by default.

The access log is batched and written off the request path by a periodic
flush, because a write() per request costs more than the rest of a small
proxied request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            event.update(extra)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), record.levelname.lower(), record.name]
        parts.append(f"msg={json.dumps(record.getMessage())}")
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            parts += [f"{k}={json.dumps(v, default=str)}" for k, v in extra.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours for the main domain.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})


def _esc(text: str) -> str:
    """The inside of a JSON string; the common case (plain printable ASCII) is returned as is."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return json.dumps(text)[1:-1]


class AccessLog:
    """Buffers access-log lines and writes them in batches to stdout."""

    def __init__(self, enabled: bool, fmt: str, fd: int = 1) -> None:
        self.enabled = enabled
        self.json = fmt == "json"
        self._fd = fd
        self._lines: list[str] = []

    def record(
        self,
        request_id: str,
        client: str,
        method: str,
        host: str,
        path: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        kind: str,
    ) -> None:
        if self.json:
            # Hand-built JSON: json.dumps of a dict costs more than the rest of a small request.
            line = (
                f'{{"ts": {time.time():.3f}, "event": "access", "request_id": "{_esc(request_id)}", '
                f'"client": "{_esc(client)}", "method": "{_esc(method)}", "host": "{_esc(host)}", '
                f'"path": "{_esc(path)}", "status": {status}, "bytes_in": {bytes_in}, "bytes_out": {bytes_out}, '
                f'"duration_ms": {duration * 1000:.3f}, "route": "{kind}"}}'
            )
        else:
            line = (
                f"access request_id={request_id} client={client} method={method} host={json.dumps(host)} "
                f"path={json.dumps(path)} status={status} bytes_in={bytes_in} bytes_out={bytes_out} "
                f"duration_ms={duration * 1000:.3f} route={kind}"
            )
        self._lines.append(line)
        if len(self._lines) >= 512:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "replace")
        self._lines.clear()
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except BlockingIOError:
            pass  # a stdout that cannot keep up loses access lines, never requests
        except OSError:
            self.enabled = False
