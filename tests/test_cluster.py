"""The multi-host test bed (bench/cluster, ``make cluster`` for the full run), in its CI
size: 3 hosts in their own network namespaces behind a real HAProxy and a real nginx,
one run each of the rolling restart and the rolling upgrade, and a host killed with
SIGKILL behind HAProxy. Every request of the load is accounted for against PostgreSQL.

It needs root (network namespaces), iproute2, PostgreSQL, HAProxy, nginx and psycopg;
without them it is skipped, unless RAPIDWSGI_REQUIRE_CLUSTER=1 (CI) makes that a failure.
It runs the installed (compiled) build, once: not again in the RAPIDWSGI_NO_C and source
passes, whose servers it would not use anyway (the hosts run the venv's rapidwsgi).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "cluster" / "cluster.py"


def _missing() -> str:
    if os.geteuid() != 0:
        return "not root (network namespaces)"
    for tool in ("ip", "haproxy", "nginx", "psql", "runuser"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        return "PostgreSQL is not installed"
    for module in ("django", "psycopg"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return ""


def _skip_or_fail() -> None:
    reason = _missing()
    if reason:
        if os.environ.get("RAPIDWSGI_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"RAPIDWSGI_REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason)
    if os.environ.get("RAPIDWSGI_NO_C") == "1" or os.environ.get("RAPIDWSGI_TEST_SOURCE") == "1":
        pytest.skip("the cluster bed runs the installed build once, in the compiled pass")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    _skip_or_fail()
    out = tmp_path_factory.mktemp("cluster") / "ci-cluster"
    by_run: dict[tuple[str, str], dict[str, Any]] = {}
    for args in (
        ["--scenario", "restart", "--scenario", "upgrade", "--balancer", "haproxy", "--balancer", "nginx"],
        ["--scenario", "kill", "--balancer", "haproxy"],
    ):
        done = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                *args,
                "--runs",
                "1",
                "--out",
                str(out),
                "--python",
                sys.executable,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        doc = json.loads(out.with_suffix(".json").read_text())
        for r in doc["results"]:
            by_run[(r["scenario"], r["balancer"])] = r
        assert done.returncode in (0, 1), done.stderr[-3000:]
    return by_run


@pytest.mark.timeout(900)
@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
@pytest.mark.parametrize("scenario", ["restart", "upgrade"])
def test_a_rolling_step_across_the_hosts_fails_no_request_and_every_2xx_post_is_one_row(
    results: dict[tuple[str, str], dict[str, Any]], scenario: str, balancer: str
) -> None:
    r = results[(scenario, balancer)]
    assert r["problems"] == []
    assert r["failed"] == 0
    assert r["requests"] > 1000  # the load really ran through the whole step
    assert r["posts_2xx"] == r["posts"] == r["rows"]
    assert r["duplicated_posts"] == 0
    assert set(r["hosts"]) == {"h1", "h2", "h3"}
    if scenario == "upgrade":
        # Every host answered both versions: the old before its reload, the new after.
        assert all(set(v) == {"v1", "v2"} for v in r["versions"].values()), r["versions"]


@pytest.mark.timeout(900)
def test_a_killed_host_fails_only_requests_already_sent_to_it_and_no_post_twice(
    results: dict[tuple[str, str], dict[str, Any]],
) -> None:
    r = results[("kill", "haproxy")]
    assert r["problems"] == []
    assert r["duplicated_posts"] == 0
    assert r["failed_sent_after_out"] == 0
    # A POST that failed may have been applied (its answer was lost): counted, and the
    # table holds exactly the 2xx POSTs plus those.
    assert r["rows"] == r["posts_2xx"] + r["failed_posts_applied"]
    assert r["failed"] <= 8  # at most one request in flight per client (8 clients)
