"""PNG charts of a results JSON: ``python bench/charts.py FILE.json OUT_DIR``.

Runs under the peers venv's Python (matplotlib is installed there, not in the project).
Writes ``<stem>-rps.png`` (req/s per server per scenario), ``<stem>-latency.png``
(latency percentiles of the keep-alive runs), ``<stem>-errors.png`` (errors at high
concurrency) and ``<stem>-seed.png`` (the seed-style table), and prints their paths.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
from common import BASELINE
from report import Cells, doc_servers, groups, seed_section, summarize

PERCENTILES = ("p50", "p75", "p90", "p99")
HIGHLIGHT = "#d62728"


def colours(servers: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20")
    others = [s for s in servers if s != BASELINE]
    out: dict[str, Any] = {s: cmap(i % 20) for i, s in enumerate(others)}
    out[BASELINE] = HIGHLIGHT
    return out


def rps_chart(doc: dict[str, Any], cells: Cells, path: Path) -> None:
    grps = groups(doc)
    servers = doc_servers(doc)
    ncols = min(3, len(grps))
    nrows = math.ceil(len(grps) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(6.5 * ncols, 0.45 * len(servers) * nrows + 2.5 * nrows), squeeze=False
    )
    for ax, (app, mode, loads) in zip(axes.flat, grps, strict=False):
        height = 0.8 / max(1, len(loads))
        for j, ld in enumerate(loads):
            ys, xs, edges = [], [], []
            for i, server in enumerate(servers):
                cell = cells.get((server, app, mode, ld))
                if cell and cell.rps:
                    ys.append(i + j * height)
                    xs.append(cell.median)
                    edges.append(HIGHLIGHT if server == BASELINE else "white")
            colour = plt.get_cmap("tab10")(j)
            ax.barh(ys, xs, height=height, color=colour, label=ld, edgecolor=edges, linewidth=1.5)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(servers))])
        ax.set_yticklabels(servers, fontsize=8)
        for tick in ax.get_yticklabels():
            if tick.get_text() == BASELINE:
                tick.set_color(HIGHLIGHT)
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_title(f"{app} · {mode}", fontsize=10)
        ax.set_xlabel("req/s (median)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(grps) :]:
        ax.axis("off")
    fig.suptitle(f"Requests per second per server and scenario ({doc['date']}; rapidwsgi outlined in red)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def latency_chart(doc: dict[str, Any], cells: Cells, path: Path) -> None:
    picked = [
        (a, m, ld)
        for a, m, loads in groups(doc)
        for ld in loads
        if ld.startswith("wrk") and m == "standalone"
    ]
    picked = picked[:6] or [(a, m, ld) for a, m, loads in groups(doc) for ld in loads][:6]
    servers = doc_servers(doc)
    col = colours(servers)
    ncols = min(3, max(1, len(picked)))
    nrows = math.ceil(len(picked) / ncols) or 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax, (app, mode, ld) in zip(axes.flat, picked, strict=False):
        for server in servers:
            cell = cells.get((server, app, mode, ld))
            if not cell or not cell.latency:
                continue
            ys = [statistics.median(lat.get(p, math.nan) for lat in cell.latency) for p in PERCENTILES]
            ax.plot(
                PERCENTILES,
                ys,
                marker="o",
                color=col[server],
                linewidth=2.5 if server == BASELINE else 1.2,
                label=server,
            )
        ax.set_yscale("log")
        ax.set_title(f"{app} · {mode} · {ld}", fontsize=10)
        ax.set_ylabel("latency ms (log)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(picked) :]:
        ax.axis("off")
    fig.suptitle("Latency distribution (percentiles, median over runs)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def errors_chart(doc: dict[str, Any], cells: Cells, path: Path) -> None:
    """A heat map: servers x high-concurrency scenarios, errors in % of requests."""
    high = [(a, m, ld) for a, m, loads in groups(doc) for ld in loads if int(ld.split("-c")[-1]) >= 500]
    servers = doc_servers(doc)
    grid: list[list[float]] = []
    notes: list[list[str]] = []
    for server in servers:
        row, note = [], []
        for app, mode, ld in high:
            cell = cells.get((server, app, mode, ld))
            if cell is None:
                row.append(math.nan)
                note.append("")
            elif not cell.rps:
                row.append(100.0)
                note.append("run\nfailed")
            else:
                row.append(100.0 * cell.errors / max(1, cell.requests + cell.errors))
                note.append(f"{cell.errors:,}" if cell.errors else "0")
        grid.append(row)
        notes.append(note)
    fig, ax = plt.subplots(figsize=(2 + 1.25 * max(1, len(high)), 1.5 + 0.45 * len(servers)))
    shown = [[math.nan if math.isnan(v) else math.log10(1 + v) for v in row] for row in grid]
    image = ax.imshow(shown, cmap="Reds", vmin=0, vmax=2, aspect="auto")
    for i, note in enumerate(notes):
        for j, text in enumerate(note):
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(high)))
    ax.set_xticklabels([f"{a}\n{m}\n{ld}" for a, m, ld in high], fontsize=7)
    ax.set_yticks(range(len(servers)))
    ax.set_yticklabels(servers, fontsize=8)
    bar = fig.colorbar(image, ax=ax)
    bar.set_ticks([0, math.log10(2), math.log10(11), 2])
    bar.set_ticklabels(["0 %", "1 %", "10 %", "99 %"])
    bar.set_label("errors, % of requests (log)")
    ax.set_title("Errors at high concurrency: count per cell (0 is the bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def seed_chart(doc: dict[str, Any], cells: Cells, path: Path) -> None:
    lines = seed_section(doc, cells)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    fig, ax = plt.subplots(figsize=(13, 0.32 * max(3, len(rows)) + 0.8))
    ax.axis("off")
    if len(rows) > 2:
        header, body = rows[0], rows[2:]
        table = ax.table(
            cellText=body, colLabels=[h.strip("`") for h in header], loc="center", cellLoc="left"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        table.auto_set_column_width(list(range(len(header))))
        for (r, _), cell in table.get_celld().items():
            if r > 0 and BASELINE in body[r - 1][0]:
                cell.set_facecolor("#fde0dd")
    ax.set_title((lines[0] if lines else "seed table").lstrip("# "), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: charts.py FILE.json OUT_DIR", file=sys.stderr)
        return 2
    source, out_dir = Path(argv[0]), Path(argv[1])
    doc = json.loads(source.read_text())
    cells = summarize(doc["runs"])
    if not doc_servers(doc):
        print("no runs: no charts", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in (
        ("rps", rps_chart),
        ("latency", latency_chart),
        ("errors", errors_chart),
        ("seed", seed_chart),
    ):
        path = out_dir / f"{source.stem}-{name}.png"
        draw(doc, cells, path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
