"""Smoke test of bench/: the fastest run against two servers writes a well-formed report.

``python bench/run.py --selftest`` runs rapidwsgi (this interpreter's build) and waitress
(installed with matplotlib into the bench's peers venv on first use) for about a second
per load, standalone and behind nginx when nginx is installed, and writes the JSON, the
markdown report and the PNG charts into a temporary directory. Nothing here asserts a
speed. Set RAPIDWSGI_SKIP_BENCH=1 to skip the self-test (it then says so; ``make
test-fast`` sets it; the quick checks below still run); missing wrk/ab is a failure, not
a skip (CI installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SERVERS = ("rapidwsgi", "waitress")
CHART_KINDS = ("rps", "latency", "errors", "seed")

#: On the tests that need the self-test run (``selftest_run``), the slow part of this file.
skip_selftest = pytest.mark.skipif(
    os.environ.get("RAPIDWSGI_SKIP_BENCH") == "1", reason="RAPIDWSGI_SKIP_BENCH=1: bench smoke test skipped"
)


def bench_module(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return __import__(name)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@pytest.fixture(scope="module")
def selftest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    missing = [tool for tool in ("wrk", "ab", "taskset") if shutil.which(tool) is None]
    assert not missing, f"the bench needs {missing}: apt-get install -y wrk apache2-utils"
    out = tmp_path_factory.mktemp("bench-out")
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--selftest",
            "--servers",
            ",".join(SERVERS),
            "--rapidwsgi-python",
            sys.executable,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    return out, proc


@skip_selftest
@pytest.mark.timeout(660)
def test_selftest_writes_report_json_and_charts(
    selftest_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = selftest_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selftest: wrk/ab/HTTP parsers ok" in proc.stderr
    # progress names the round, the scenario, the server and the load
    assert "[round 1/1" in proc.stderr and "hello standalone" in proc.stderr

    (json_path,) = out.glob("*.json")
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == 2
    assert doc["config"]["profile"] == "selftest"
    assert not doc["skipped"], doc["skipped"]
    runs = doc["runs"]
    assert {r["server"] for r in runs} == set(SERVERS)
    for run in runs:
        assert run["ok"], run["error"]
        result = run["result"]
        assert result["requests"] > 0 and result["rps"] > 0
        assert {"p50", "p99"} <= set(result["latency_ms"])
        assert run["rss_kb"] > 0
    planned = {(g["app"], g["mode"], ld) for g in doc["config"]["plan"] for ld in g["loads"]}
    measured = {(r["app"], r["mode"], r["load"]) for r in runs}
    assert measured == planned
    assert all(doc["preflight"][s]["ok"] for s in SERVERS)

    md = json_path.with_suffix(".md").read_text()
    for heading in (
        "# rapidwsgi bench",
        "## The seed's table, today",
        "## Requests per second",
        "## rapidwsgi / peer",
        "## Errors at high concurrency",
        "## Latency p50 / p99",
        "## Charts",
        "## Machine and setup",
    ):
        assert heading in md, heading
    assert "waitress" in md and "rapidwsgi" in md

    assert sorted(doc["charts"]) == sorted(f"{json_path.stem}-{kind}.png" for kind in CHART_KINDS)
    for name in doc["charts"]:
        width, height = png_size(out / name)
        assert width > 200 and height > 100
        assert f"]({name})" in md


@skip_selftest
def test_markdown_rerenders_from_json(selftest_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = selftest_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_path,) = out.glob("*.json")
    md_path = json_path.with_suffix(".md")
    before = md_path.read_text()
    md_path.unlink()
    again = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--markdown-only", str(json_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert md_path.read_text() == before


def test_parsers_and_plans() -> None:
    run = bench_module("run")
    run.check_parsers()
    args = run.parse_args(["--apps", "django", "--modes", "standalone,nginx-uwsgi", "--loads", "ab-c20"])
    plan = run.build_plan(args, "full")
    assert [(g.app.name, g.mode.name, [ld.name for ld in g.loads]) for g in plan] == [
        ("django", "standalone", ["ab-c20"]),
        ("django", "nginx-uwsgi", ["ab-c20"]),
    ]
    with pytest.raises(SystemExit):
        run.build_plan(run.parse_args(["--apps", "nope"]), "full")


def test_modes_support_and_nginx_configs(tmp_path: Path) -> None:
    peers = bench_module("peers")
    front = bench_module("front")
    assert peers.SERVER_BY_NAME["rapidwsgi"].supports("uwsgi", "uwsgi")
    assert peers.SERVER_BY_NAME["rapidwsgi"].supports("fastcgi", "fastcgi")
    assert not peers.SERVER_BY_NAME["gunicorn"].supports("http", "proxy-ka")
    assert not peers.SERVER_BY_NAME["waitress"].supports("uwsgi", "uwsgi")
    directives = {
        "proxy": "proxy_pass http://backend;",
        "proxy-ka": "proxy_http_version 1.1;",
        "uwsgi": "uwsgi_pass backend;",
        "fastcgi": "fastcgi_keep_conn on;",
    }
    for mode, directive in directives.items():
        conf = front.render_config(mode, tmp_path, 8080, "unix:/tmp/x.sock", 1)
        assert directive in conf
        assert ("keepalive 64;" in conf) == (mode in ("proxy-ka", "fastcgi"))
        assert "listen 127.0.0.1:8080" in conf
