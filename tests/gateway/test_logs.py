"""The access log is hand-built JSON: every line must parse back to what was recorded."""

from __future__ import annotations

import json
import os

import pytest

from gateway.logs import AccessLog


@pytest.mark.parametrize(
    "text",
    ["plain", 'quo"te', "back\\slash", "ctl\x01\x1f\x7f", "tab\tnl\n", "caf\u00e9 \u2603", "\ud800".encode(
        "utf-8", "surrogatepass").decode("utf-8", "replace"), "</script><script>alert(1)</script>"],
)
def test_access_lines_are_valid_json_whatever_the_request_holds(text: str) -> None:
    r, w = os.pipe()
    log = AccessLog(True, "json", fd=w)
    log.record(text, "127.0.0.1", text, text, "/" + text, 200, 10, 20, 0.00125, "workspace")
    log.flush()
    os.close(w)
    line = os.read(r, 65536).decode()
    os.close(r)
    assert line.endswith("\n") and line.count("\n") == 1, "one event, one line"
    event = json.loads(line)
    assert event["request_id"] == text and event["method"] == text and event["host"] == text
    assert event["path"] == "/" + text
    assert event["status"] == 200 and event["bytes_in"] == 10 and event["bytes_out"] == 20
    assert event["duration_ms"] == 1.25 and event["event"] == "access" and event["route"] == "workspace"
