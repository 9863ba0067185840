"""The markdown report of a results JSON (also used by charts.py for the summaries).

Sections: the seed-style table (the Django page in every mode, ab loads), req/s per
(app, mode) group, rapidwsgi / peer ratios and where rapidwsgi trails, latency, errors at
high concurrency, flags, the keep-alive fairness probe, charts, machine and setup.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from common import BASELINE, ERROR_KINDS, Fairness, Preflight, RunRecord, error_total, fmt_ms, fmt_rate

FAIRNESS_CONNS = 20
HIGH_CONCURRENCY = 500


@dataclass
class Cell:
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    latency: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    runs_with_errors: int = 0
    failed_runs: int = 0
    length_mismatch: int = 0
    rss_kb: int = 0
    last_failure: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rps) if self.rps else 0.0


Key = tuple[str, str, str, str]  # server, app, mode, load
Cells = dict[Key, Cell]


def summarize(runs: Sequence[RunRecord]) -> Cells:
    cells: Cells = {}
    for run in runs:
        cell = cells.setdefault((run["server"], run["app"], run["mode"], run["load"]), Cell())
        cell.rss_kb = max(cell.rss_kb, run.get("rss_kb", 0))
        result = run["result"]
        if not run["ok"] or result is None or not result["requests"]:
            cell.failed_runs += 1
            cell.last_failure = run["error"] or "no response within the run (0 requests)"
            continue
        cell.rps.append(result["rps"])
        cell.latency.append(result["latency_ms"])
        cell.p50.append(result["latency_ms"].get("p50", math.nan))
        cell.p99.append(result["latency_ms"].get("p99", math.nan))
        errors = error_total(result["errors"])
        counts = cast(dict[str, int], result["errors"])
        for kind in ERROR_KINDS:
            cell.by_kind[kind] = cell.by_kind.get(kind, 0) + counts[kind]
        cell.errors += errors
        cell.requests += result["requests"]
        cell.runs_with_errors += 1 if errors else 0
        cell.length_mismatch += result["errors"]["length_mismatch"]
    return cells


def describe_kinds(by_kind: dict[str, int]) -> str:
    return ", ".join(f"{kind} {by_kind[kind]:,}" for kind in ERROR_KINDS if by_kind.get(kind))


def groups(doc: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [(g["app"], g["mode"], list(g["loads"])) for g in doc["config"]["plan"]]


def doc_servers(doc: dict[str, Any]) -> list[str]:
    measured = {run["server"] for run in doc["runs"]}
    return [s for s in doc["config"]["servers"] if s in measured]


def server_label(doc: dict[str, Any], server: str) -> str:
    versions: dict[str, str] = doc.get("versions", {})
    dist = "uwsgi" if server == "uwsgi" else server.split("-", maxsplit=1)[0]
    version = versions.get(dist, "")
    label: str = doc["config"].get("server_labels", {}).get(server, server)
    return f"{label} {version}" if version and version != "not installed" else label


def rate_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if not cell.rps:
        return f"failed ({cell.failed_runs} runs)"
    text = fmt_rate(cell.median)
    if len(cell.rps) > 1:
        text += f" [{fmt_rate(min(cell.rps))}-{fmt_rate(max(cell.rps))}]"
    if cell.errors:
        text += f" ⚠ {cell.errors:,} err"
    if cell.failed_runs:
        text += f" ({cell.failed_runs} failed)"
    return text


def ratio(base: Cell | None, peer: Cell | None) -> float | None:
    if base is None or peer is None or not base.rps or not peer.rps or not peer.median:
        return None
    return base.median / peer.median


def ratio_cell(base: Cell | None, peer: Cell | None) -> str:
    value = ratio(base, peer)
    if value is None:
        return "-"
    flag = " ⚠" if (base and base.errors) or (peer and peer.errors) else ""
    return f"{'**' if value < 1 else ''}{value:.2f}{'**' if value < 1 else ''}{flag}"


def latency_cell(cell: Cell | None) -> str:
    if cell is None or not cell.rps:
        return "-"
    return f"{fmt_ms(statistics.median(cell.p50))} / {fmt_ms(statistics.median(cell.p99))}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A markdown table; the first text_columns are left-aligned, the rest right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def mode_label(doc: dict[str, Any], mode: str) -> str:
    return str(doc["config"].get("modes", {}).get(mode, mode))


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


def seed_app(doc: dict[str, Any]) -> str:
    with_ab = [a for a, _, loads in groups(doc) if "ab-c20" in loads or "ab-c500" in loads]
    return "django" if "django" in with_ab else (with_ab[0] if with_ab else "")


def seed_rows(doc: dict[str, Any], cells: Cells) -> list[tuple[str, str, Cell | None, Cell | None]]:
    app = seed_app(doc)
    rows = []
    for gapp, mode, loads in groups(doc):
        if gapp != app or not ("ab-c20" in loads or "ab-c500" in loads):
            continue
        for server in doc_servers(doc):
            c20, c500 = cells.get((server, app, mode, "ab-c20")), cells.get((server, app, mode, "ab-c500"))
            if c20 or c500:
                rows.append((mode, server, c20, c500))
    return rows


def seed_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    app = seed_app(doc)
    if not app:
        return []
    body = []
    for mode, server, c20, c500 in seed_rows(doc, cells):
        name = server_label(doc, server)
        front = mode_label(doc, mode)
        label = name if mode == "standalone" else f"{front} + {name}"
        runs = ", ".join(f"{r:,.0f}" for r in c20.rps) if c20 and c20.rps else "-"
        if c20 and c20.errors:
            runs += f" ⚠ {c20.errors:,} failed"
        last = f"{c500.median:,.0f}" if c500 and c500.rps else "-"
        if c500 and (c500.errors or c500.failed_runs):
            last += f" ⚠ {c500.errors:,} failed" if c500.errors else " (run failed)"
        body.append([label, runs, last])
    title = f"## The seed's table, today ({app}, req/s)"
    n = doc["config"].get("ab_requests", {})
    reps = doc["config"].get("load_repeats", {}).get("ab-c20", 1)
    header = [
        "server",
        f"ab -n {n.get('ab-c20', '?')} -c 20 ({reps} runs)",
        f"ab -n {n.get('ab-c500', '?')} -c 500",
    ]
    return [title, "", *md_table(header, body), ""]


def group_table(
    doc: dict[str, Any], cells: Cells, app: str, mode: str, loads: list[str], latency: bool
) -> list[str]:
    rows = []
    for server in doc_servers(doc):
        row_cells = [cells.get((server, app, mode, ld)) for ld in loads]
        if not any(row_cells):
            continue
        values = [latency_cell(c) if latency else rate_cell(c) for c in row_cells]
        if not latency:
            rss = max((c.rss_kb for c in row_cells if c), default=0)
            values.append(f"{rss / 1024:.0f}" if rss else "-")
        rows.append([server_label(doc, server), *values])
    header = ["server", *loads] + ([] if latency else ["peak RSS MiB"])
    return [f"### {app} · {mode_label(doc, mode)}", "", *md_table(header, rows), ""]


def rate_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    rounds = doc["config"]["rounds"]
    lines = [f"## Requests per second (median over {rounds} round(s) and repeats [min-max])", ""]
    for app, mode, loads in groups(doc):
        lines += group_table(doc, cells, app, mode, loads, latency=False)
    return lines


def latency_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    lines = ["## Latency p50 / p99 in ms (median over runs; ab reports whole ms)", ""]
    for app, mode, loads in groups(doc):
        lines += group_table(doc, cells, app, mode, loads, latency=True)
    return lines


def scenarios(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(app, mode, ld) for app, mode, loads in groups(doc) for ld in loads]


def ratio_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    title = "## rapidwsgi / peer (ratio of median req/s; >1.00: rapidwsgi faster, **bold**: behind)"
    servers = doc_servers(doc)
    if BASELINE not in servers:
        return [title, "", "rapidwsgi was not measured in this run: no ratios.", ""]
    peers = [s for s in servers if s != BASELINE]
    rows = []
    for app, mode, ld in scenarios(doc):
        base = cells.get((BASELINE, app, mode, ld))
        row = [ratio_cell(base, cells.get((p, app, mode, ld))) for p in peers]
        if any(v != "-" for v in row):
            rows.append([f"{app} {mode} {ld}", *row])
    note = "⚠ = rapidwsgi or the peer had errors in that cell (see Errors and Flags)."
    return [title, "", *md_table(["scenario", *peers], rows), "", note, ""]


def trailing(doc: dict[str, Any], cells: Cells) -> list[tuple[float, str, str, int]]:
    """(ratio, peer, scenario, peer errors) where rapidwsgi is behind, worst first."""
    out = []
    for app, mode, ld in scenarios(doc):
        base = cells.get((BASELINE, app, mode, ld))
        for peer in doc_servers(doc):
            cell = cells.get((peer, app, mode, ld))
            value = ratio(base, cell)
            if peer != BASELINE and cell is not None and value is not None and value < 1:
                out.append((value, peer, f"{app} {mode} {ld}", cell.errors))
    return sorted(out)


def verdict_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    if BASELINE not in doc_servers(doc):
        return []
    behind = trailing(doc, cells)
    clean = [b for b in behind if not b[3]]
    errored = [b for b in behind if b[3]]
    total = sum(
        1
        for app, mode, ld in scenarios(doc)
        for peer in doc_servers(doc)
        if peer != BASELINE and ratio(cells.get((BASELINE, app, mode, ld)), cells.get((peer, app, mode, ld)))
    )
    base_errors = [
        f"{app} {mode} {ld}: {describe_kinds(c.by_kind)} of {c.requests:,}"
        for app, mode, ld in scenarios(doc)
        if (c := cells.get((BASELINE, app, mode, ld))) and c.errors
    ]
    lines = [
        "## Against the bar (rapidwsgi ahead of every peer in every scenario, no failed requests)",
        "",
        f"- rapidwsgi is ahead in {total - len(behind)} of {total} (peer, scenario) cells and behind "
        f"in {len(behind)}: {len(clean)} against a peer without errors in that cell, {len(errored)} "
        "against a peer that had errors there (a rate that comes with errors is not a lead).",
    ]
    if base_errors:
        lines.append("- rapidwsgi had errors in: " + "; ".join(base_errors))
    else:
        lines.append("- rapidwsgi had no failed request, socket error or non-2xx response in any run.")
    if clean:
        lines += [
            "",
            "Where it trails a peer that had no errors (rapidwsgi / peer, worst first): the next work.",
            "",
        ]
        lines += [f"- {scenario}: {value:.2f} vs {peer}" for value, peer, scenario, _ in clean[:40]]
        if len(clean) > 40:
            lines.append(f"- ... and {len(clean) - 40} more (see the ratio table)")
    if errored:
        lines += ["", "Behind in req/s against a peer that had errors in the same cell:", ""]
        lines += [
            f"- {scenario}: {value:.2f} vs {peer} ({errors:,} errors)"
            for value, peer, scenario, errors in errored
        ]
    return [*lines, ""]


def errors_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    high = [(a, m, ld) for a, m, ld in scenarios(doc) if int(ld.split("-c")[-1]) >= HIGH_CONCURRENCY]
    if not high:
        return []
    rows = []
    for server in doc_servers(doc):
        values = []
        for app, mode, ld in high:
            cell = cells.get((server, app, mode, ld))
            if cell is None:
                values.append("-")
            elif not cell.rps:
                values.append(f"run failed: {cell.last_failure[:60]}")
            elif cell.errors:
                values.append(f"{cell.errors:,} of {cell.requests:,} ({describe_kinds(cell.by_kind)})")
            else:
                values.append(f"0 of {cell.requests:,}")
        rows.append([server_label(doc, server), *values])
    header = ["server", *(f"{a} {m} {ld}" for a, m, ld in high)]
    note = (
        "Errors summed over runs: connect/read/write/timeout are wrk socket errors (timeout: no "
        "answer within wrk's 2 s), failed is ab's Connect+Receive+Exceptions, non_2xx counts "
        "responses other than 2xx/3xx."
    )
    return [
        "## Errors at high concurrency (errors of requests completed)",
        "",
        *md_table(header, rows),
        "",
        note,
        "",
    ]


def modes_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    """Per app and load measured in several modes: req/s and the ratio to standalone."""
    lines: list[str] = []
    seen: dict[tuple[str, str], list[str]] = {}
    for app, mode, loads in groups(doc):
        for ld in loads:
            seen.setdefault((app, ld), []).append(mode)
    for (app, ld), modes in seen.items():
        if len(modes) < 2 or "standalone" not in modes:
            continue
        rows = []
        for server in doc_servers(doc):
            alone = cells.get((server, app, "standalone", ld))
            row = []
            for mode in modes:
                cell = cells.get((server, app, mode, ld))
                if cell is None or not cell.rps:
                    row.append("-")
                    continue
                text = fmt_rate(cell.median)
                value = ratio(cell, alone) if mode != "standalone" else None
                text += f" ({value:.2f})" if value is not None else ""
                row.append(text + (" ⚠" if cell.errors else ""))
            if any(v != "-" for v in row[1:]):
                rows.append([server_label(doc, server), *row])
        if rows:
            header = ["server", *(mode_label(doc, m) for m in modes)]
            lines += [f"### {app} · {ld}", "", *md_table(header, rows), ""]
    if not lines:
        return []
    title = "## What nginx in front costs (req/s; in brackets: ratio to the same server standalone)"
    return [title, "", *lines]


def error_flags(doc: dict[str, Any], cells: Cells) -> list[str]:
    lines: list[str] = []
    for (server, app, mode, ld), cell in sorted(cells.items()):
        name = f"{server} / {app} {mode} {ld}"
        if cell.length_mismatch and app in ("hello", "big"):
            lines.append(f"- {name}: ab saw {cell.length_mismatch:,} responses of another length")
        if cell.failed_runs:
            lines.append(f"- {name}: {cell.failed_runs} run(s) failed, last: {cell.last_failure}")
    return lines


def preflight_flags(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    pre_all: dict[str, Preflight] = doc.get("preflight", {})
    for server, pre in pre_all.items():
        if not pre["ok"]:
            lines.append(f"- {server}: did not start: {pre['error']}")
            continue
        fair = pre["fairness"]
        if fair and fair.get("parse_error"):
            lines.append(f"- {server}: fairness probe inconclusive: {fair['parse_error']}")
        lines += [f"- {server}: {flag}" for flag in (fair["flags"] if fair else [])]
    return lines


def flags_section(doc: dict[str, Any], cells: Cells) -> list[str]:
    lines = [f"- install failed: {d}: {why}" for d, why in doc.get("install_failures", {}).items()]
    lines += [f"- {s}: skipped: {why}" for s, why in doc.get("skipped", {}).items()]
    lines += [f"- app {a}: skipped: {why}" for a, why in doc.get("skipped_apps", {}).items()]
    lines += [
        f"- {d['server']} / {d['group']}: did not start, dropped: {d['error']}"
        for d in doc.get("dropped", [])
    ]
    notes = doc["config"].get("server_notes", {})
    lines += [f"- {s}: {note}" for s, note in notes.items()]
    lines += error_flags(doc, cells) + preflight_flags(doc)
    if doc.get("charts_error"):
        lines.append(f"- charts: {doc['charts_error']}")
    return ["## Flags and notes", "", *(lines or ["- none"]), ""]


def fairness_verdict(fair: Fairness) -> str:
    if any(flag.startswith("unfair") for flag in fair["flags"]):
        return "UNFAIR"
    if fair["unannounced_closes"]:
        return "closes without notice"
    return "no keep-alive" if fair["closes"] else "ok"


def fairness_section(doc: dict[str, Any]) -> list[str]:
    rows = []
    pre_all: dict[str, Preflight] = doc.get("preflight", {})
    for server, pre in pre_all.items():
        fair = pre["fairness"]
        if not pre["ok"] or fair is None:
            continue
        if fair["parse_error"]:
            rows.append([server, "inconclusive", "-", "-", "-"])
            continue
        counts = fair["responses"]
        spread = f"{min(counts)} / {statistics.median(counts):.0f} / {max(counts)}"
        closes = f"{fair['closes']} ({fair['unannounced_closes']} unannounced)"
        rows.append([server, f"{sum(counts):,}", spread, closes, fairness_verdict(fair)])
    if not rows:
        return []
    header = ["server", "responses", "per conn min / median / max", "closes", "verdict"]
    title = (
        f"## Keep-alive fairness probe ({FAIRNESS_CONNS} connections, 1 s, Python client; "
        "absolute numbers mean nothing)"
    )
    return [title, "", *md_table(header, rows), ""]


def charts_section(doc: dict[str, Any]) -> list[str]:
    charts: list[str] = doc.get("charts", [])
    if not charts:
        return []
    return ["## Charts", "", *(f"![{name}]({name})" for name in charts), ""]


def machine_section(doc: dict[str, Any]) -> list[str]:
    m, cfg, v = doc["machine"], doc["config"], doc["versions"]
    installed = ", ".join(f"{d} {ver}" for d, ver in v.items() if ver != "not installed" and d != "python")
    loads = "; ".join(f"{name}: `{cmd}`" for name, cmd in cfg["loads"].items())
    single = ", ".join(cfg.get("single_process", []))
    return [
        "## Machine and setup",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores, {m['memory']}; {m.get('os', '')}",
        f"- Kernel: {m['kernel']}; somaxconn {m.get('somaxconn', '?')}; RLIMIT_NOFILE {m['nofile_limit']}",
        f"- Python: harness {m['python_harness']}, servers {v.get('python', '?')}",
        f"- Packages (peers venv): {installed}",
        f"- granian: {doc.get('granian_defaults', 'n/a')}",
        f"- Tools: {m['wrk']}; {m['ab']}; {m.get('nginx', '')}",
        (
            f"- Servers: {cfg['workers']} worker(s) pinned to cpu {m['server_cpus']} "
            f"(one process always: {single}); load generator and nginx pinned to cpu "
            f"{m['load_cpus']}; 127.0.0.1 and unix sockets only"
        ),
        f"- Loads: {loads}",
        (
            f"- Profile {cfg['profile']}: {cfg['rounds']} round(s); each (app, mode) visit starts "
            "the server once and runs its loads in order of concurrency; servers interleaved in "
            f"a shuffled order per round, seed {cfg['seed']}; wall time {doc.get('wall_seconds', '?')} s"
        ),
        "",
    ]


def render_markdown(doc: dict[str, Any]) -> str:
    cells = summarize(doc["runs"])
    title = f"# rapidwsgi bench, {doc['date']} on {doc['machine']['hostname']}"
    if doc.get("interrupted"):
        title += " (interrupted: partial results)"
    sections = [
        [title, ""],
        seed_section(doc, cells),
        verdict_section(doc, cells),
        rate_section(doc, cells),
        ratio_section(doc, cells),
        modes_section(doc, cells),
        errors_section(doc, cells),
        latency_section(doc, cells),
        charts_section(doc),
        flags_section(doc, cells),
        fairness_section(doc),
        machine_section(doc),
    ]
    return "\n".join(line for section in sections for line in section)
