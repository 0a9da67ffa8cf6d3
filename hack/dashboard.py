"""Renders the chart's Grafana dashboard from a real run's series, with a real Prometheus, to a PNG.

Grafana is not packaged by Debian (this project installs from Debian, PyPI and the Go module proxy
only), so the dashboard is drawn here the honest way that is left: the series the operator served
during a run (`/metrics`, scraped once a second by tests/e2e/test_local_demo.py) are backfilled
into Debian's Prometheus (`promtool tsdb create-blocks-from openmetrics`), Prometheus evaluates
every panel's own PromQL from charts/rlhf-operator/files/dashboards/rlhf-jobs.json (the dashboard
variables set to "All"), and each panel is drawn from what it returns at the dashboard's
`gridPos` in one HTML page that headless Chromium screenshots. Only the drawing is not Grafana's.

    python hack/dashboard.py SERIES.json --out docs/images/dashboard.png

`make dashboard-tools` installs Prometheus and Chromium (hack/install-dashboard-tools.sh).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localcluster import tools_dir

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "rlhf-operator" / "files" / "dashboards" / "rlhf-jobs.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
Scrapes = list[tuple[float, str]]


def openmetrics(scrapes: Scrapes, prefix: str = "rlhf_job_") -> str:
    """The `prefix` series of timed Prometheus text scrapes as one OpenMetrics document (each
    family's samples together, in time order, typed `unknown` so names are kept as served)."""
    families: dict[str, list[str]] = {}
    for at, text in sorted(scrapes):
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if match and match[1].startswith(prefix):
                families.setdefault(match[1], []).append(f"{match[1]}{match[2] or ''} {match[3]} {at:.3f}")
    lines = []
    for name, samples in families.items():
        lines += [f"# TYPE {name} unknown", *samples]
    return "\n".join([*lines, "# EOF"]) + "\n"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{query}", timeout=30) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextmanager
def prometheus_with(scrapes: Scrapes, workdir: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus on 127.0.0.1, its storage the scrapes backfilled; stopped afterwards."""
    binaries = tools_dir() / "prometheus"
    if not (binaries / "prometheus").exists():
        raise RuntimeError(f"no Prometheus in {binaries}: run `make dashboard-tools`")
    source, data = workdir / "series.om", workdir / "data"
    source.write_text(openmetrics(scrapes))
    subprocess.run(
        [str(binaries / "promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True, capture_output=True,
    )  # fmt: skip
    config = workdir / "prometheus.yml"
    config.write_text("global: {}\n")
    from rlhf_operator.local_runner import free_port

    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [str(binaries / "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=3650d"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((workdir / "prometheus.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(15)


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(panel, its first target's PromQL with the dashboard's variables set to All)."""
    out = []
    for panel in dashboard["panels"]:
        expr = (
            panel["targets"][0]["expr"].replace('=~"$namespace"', '=~".*"').replace('=~"$rlhfjob"', '=~".*"')
        )
        out.append((panel, expr))
    return out


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template).strip()


def _svg(
    panel: dict[str, Any], result: list[dict[str, Any]], width: float, height: float, start: float
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    figure.patch.set_facecolor("#181b1f")
    axis.set_facecolor("#181b1f")
    axis.tick_params(colors="#ccccdc", labelsize=7)
    for spine in axis.spines.values():
        spine.set_color("#3a3d42")
    template = panel["targets"][0].get("legendFormat", "")
    if panel["type"] == "state-timeline":
        _state_rows(axis, result, start)
    for series in result if panel["type"] != "state-timeline" else []:
        times = [(float(t) - start) / 60 for t, _ in series["values"]]
        values = [float(v) for _, v in series["values"]]
        axis.plot(times, values, linewidth=1.4, label=legend(template, series["metric"]))
    if result and panel["type"] != "state-timeline":
        axis.legend(fontsize=6, facecolor="#181b1f", labelcolor="#ccccdc", edgecolor="#3a3d42")
    axis.set_xlabel("minutes into the run", color="#ccccdc", fontsize=7)
    axis.grid(color="#2c3035")
    figure.tight_layout(pad=0.4)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", facecolor=figure.get_facecolor())
    plt.close(figure)
    return buffer.getvalue()[buffer.getvalue().index("<svg") :]


STATE_COLOURS = {
    "Pending": "#5a5d63",
    "Running": "#5794f2",
    "Succeeded": "#73bf69",
    "Failed": "#f2495c",
    "Skipped": "#8e8e8e",
}


def _state_rows(axis: Any, result: list[dict[str, Any]], start: float) -> None:
    """As Grafana's state timeline draws it: one row per job and stage, coloured by its state."""
    rows = sorted({(r["metric"]["namespace"], r["metric"]["rlhfjob"], r["metric"]["stage"]) for r in result})
    for series in result:
        labels = series["metric"]
        row = rows.index((labels["namespace"], labels["rlhfjob"], labels["stage"]))
        times = [(float(t) - start) / 60 for t, _ in series["values"]]
        axis.plot(times, [row] * len(times), linewidth=6, solid_capstyle="butt",
                  color=STATE_COLOURS.get(labels["state"], "#ccccdc"))  # fmt: skip
    axis.set_yticks(range(len(rows)), [f"{ns}/{job} {stage}" for ns, job, stage in rows], fontsize=6)
    for state, colour in STATE_COLOURS.items():
        axis.plot([], [], color=colour, linewidth=6, label=state)
    axis.legend(
        fontsize=6, facecolor="#181b1f", labelcolor="#ccccdc", edgecolor="#3a3d42", ncol=5, loc="upper left"
    )


def _stat_or_table(panel: dict[str, Any], result: list[dict[str, Any]]) -> str:
    template = panel["targets"][0].get("legendFormat", "")
    rows = [
        (legend(template, r["metric"]) or r["metric"].get("__name__", ""), r["values"][-1][1]) for r in result
    ]
    if panel["type"] == "stat":
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        cells = [f"<div class='stat'>{html.escape(name)}<b>{float(v):.0%}</b></div>" if unit == "percentunit"
                 else f"<div class='stat'>{html.escape(name)}<b>{float(v):.4g}</b></div>" for name, v in rows]  # fmt: skip
        return "".join(cells) or "<div class='empty'>No data</div>"
    body = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(v)}</td></tr>" for n, v in rows)
    return (
        f"<table><tr><th>series</th><th>value</th></tr>{body}</table>"
        if rows
        else "<div class='empty'>No alerts firing</div>"
    )


def page(
    dashboard: dict[str, Any], results: list[list[dict[str, Any]]], start: float, width: int = 1600
) -> str:
    unit_w, unit_h = width / 24, 34
    panels = []
    for (panel, expr), result in zip(panel_queries(dashboard), results, strict=True):
        pos = panel["gridPos"]
        w, h = pos["w"] * unit_w - 8, pos["h"] * unit_h - 8
        inner = (
            _stat_or_table(panel, result)
            if panel["type"] in ("stat", "table")
            else _svg(panel, result, w - 16, h - 44, start)
        )
        panels.append(
            f"<div class='panel' style='left:{pos['x'] * unit_w + 4}px;top:{pos['y'] * unit_h + 60}px;"
            f"width:{w}px;height:{h}px'><h3>{html.escape(panel['title'])}</h3>{inner}"
            f"<code>{html.escape(expr)}</code></div>"
        )
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * unit_h + 70
    style = (
        "body{margin:0;background:#111217;font-family:DejaVu Sans,sans-serif;color:#ccccdc}"
        "header{padding:14px 16px;font-size:18px}header small{color:#8e8e8e;font-size:12px;margin-left:12px}"
        ".panel{position:absolute;background:#181b1f;border:1px solid #2c3035;border-radius:3px;overflow:hidden}"
        ".panel h3{margin:6px 8px;font-size:13px;font-weight:500}.panel svg{display:block;margin:0 8px}"
        ".panel code{position:absolute;bottom:2px;left:8px;font-size:9px;color:#6e7077;white-space:nowrap}"
        ".stat{display:inline-block;margin:10px 16px;font-size:12px}.stat b{display:block;font-size:40px;color:#73bf69}"
        "table{margin:4px 8px;font-size:12px;border-collapse:collapse}td,th{padding:2px 8px;text-align:left}"
        ".empty{margin:20px;color:#8e8e8e}"
    )
    title = html.escape(dashboard["title"])
    note = "every panel's own PromQL, evaluated by Prometheus over a real run's series; drawn without Grafana"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head>"
        f"<body style='height:{height}px'><header>{title}<small>{note}</small></header>{''.join(panels)}</body></html>"
    )


def screenshot(document: str, out: Path, width: int, height: int, workdir: Path) -> None:
    source = workdir / "dashboard.html"
    source.write_text(document)
    profile = workdir / "chromium-profile"
    result = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
         f"--screenshot={out}", "--hide-scrollbars", source.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")


def render(scrapes: Scrapes, out: Path, width: int = 1600) -> list[list[dict[str, Any]]]:
    """Renders the dashboard from `scrapes` into `out` (PNG); each panel's query results."""
    dashboard = json.loads(DASHBOARD.read_text())
    start, end = min(t for t, _ in scrapes), max(t for t, _ in scrapes)
    with tempfile.TemporaryDirectory(prefix="rlhf-dashboard-") as scratch:
        workdir = Path(scratch)
        with prometheus_with(scrapes, workdir) as prometheus:
            results = [prometheus.query_range(expr, start, end, 2) for _, expr in panel_queries(dashboard)]
        height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * 34 + 70
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page(dashboard, results, start, width), out, width, height, workdir)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "series", type=Path, help="JSON list of [unix time, /metrics text] (RLHF_SAVE_SERIES)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    args = parser.parse_args(argv)
    scrapes = [(float(t), text) for t, text in json.loads(args.series.read_text())]
    results = render(scrapes, args.out)
    empty = [
        p["title"]
        for (p, _), r in zip(panel_queries(json.loads(DASHBOARD.read_text())), results, strict=True)
        if not r
    ]
    print(f"{args.out}: {len(results)} panels" + (f"; without data: {', '.join(empty)}" if empty else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
