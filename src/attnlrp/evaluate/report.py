"""The report of a suite run: a PNG figure and a self-contained HTML page (figures inlined, no network)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from matplotlib.figure import Figure

#: Metric columns in report order, with how to read them.
COLUMNS = {
    "abpc": "ABPC ↑",
    "comprehensiveness": "comprehensiveness ↑",
    "sufficiency": "sufficiency ↓",
    "pointing": "pointing game ↑",
    "recovery": "recovery@|E| ↑",
    "pointing_no_first": "pointing, first token out ↑",
    "recovery_no_first": "recovery, first token out ↑",
    "first_share": "|R| share of first token",
    "seconds": "seconds / item",
}


def headline(results: dict) -> list[str]:
    """The metrics a suite is judged by: the perturbation ones, or the ground-truth ones."""
    return ["abpc", "comprehensiveness", "sufficiency"] if results["curves"] else ["pointing", "recovery"]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _bars(results: dict) -> Figure:
    keys = headline(results)
    methods = results["methods"]
    fig = Figure(figsize=(3.6 * len(keys), 3.2))
    for k, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), k + 1)
        stats = [results["metrics"][m][key] for m in methods]
        means = [s["mean"] for s in stats]
        errors = [[s["mean"] - s["low"] for s in stats], [s["high"] - s["mean"] for s in stats]]
        ax.bar(range(len(methods)), means, yerr=errors, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(COLUMNS[key], fontsize=9)
        ax.axhline(0, color="#888", linewidth=0.6)
    fig.suptitle(
        f"{results['settings']['suite']}: mean and 95% bootstrap interval, {results['kept']} items", fontsize=10
    )
    fig.tight_layout()
    return fig


def _curves(results: dict) -> Figure:
    fig = Figure(figsize=(9, 3.4))
    for k, (key, title) in enumerate((("morf", "most relevant first"), ("lerf", "least relevant first"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for method, curves in results["curves"].items():
            values = curves[key]
            ax.plot([i / (len(values) - 1) for i in range(len(values))], values, label=method, linewidth=1.2)
        ax.set_title(f"{title} ({results['settings']['mode']})", fontsize=9)
        ax.set_xlabel("fraction of tokens perturbed")
        ax.set_ylabel("explained value (mean)")
    fig.axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _by_group(results: dict, key: str) -> Figure:
    """The needle's lengths as lines (an ordered axis); other suites' groups as a method x group grid of values."""
    groups, methods = list(results["groups"]), results["methods"]
    means = [[results["groups"][g][m][key]["mean"] for g in groups] for m in methods]
    if results["settings"]["suite"] == "needle":
        fig = Figure(figsize=(6, 3.4))
        ax = fig.add_subplot()
        for method, row in zip(methods, means):
            ax.plot(groups, row, marker="o", label=method)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(COLUMNS[key])
        ax.legend(fontsize=7)
    else:
        fig = Figure(figsize=(max(4.5, 1.2 + 0.75 * len(groups)), 0.9 + 0.32 * len(methods)))
        ax = fig.add_subplot()
        image = ax.imshow(means, cmap="viridis", aspect="auto")
        light = 0.5 * max(max(row) for row in means)  # above it the colour map is light: dark text
        for i, row in enumerate(means):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > light else "white",
                )
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.set_title(f"{COLUMNS[key]} per group", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def figures(results: dict) -> dict[str, tuple[str, bytes]]:
    """{name: (caption, PNG)}: the headline metrics, the mean curves, the headline metric per group."""
    out = {"metrics": ("headline metrics", _png(_bars(results)))}
    if results["curves"]:
        out["curves"] = ("mean perturbation curves", _png(_curves(results)))
    if results["groups"]:
        key = headline(results)[0]
        out["groups"] = (f"{COLUMNS[key]} per group", _png(_by_group(results, key)))
    return out


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} <small>[{stat['low']:.3f}, {stat['high']:.3f}]</small>"


def _table(by_method: dict, methods: list[str]) -> str:
    keys = [k for k in COLUMNS if any(k in by_method[m] for m in methods)]
    head = "".join(f"<th>{html.escape(COLUMNS[k])}</th>" for k in keys)
    rows = "".join(
        f"<tr><th>{html.escape(m)}</th>" + "".join(f"<td>{_cell(by_method[m][k])}</td>" for k in keys) + "</tr>"
        for m in methods
    )
    return f"<table><tr><th>method</th>{head}</tr>{rows}</table>"


def write_report(results: dict, path: str | Path) -> list[Path]:
    """Write the page ``path`` (.html) and each figure beside it (``<stem>-<name>.png``); returns their paths."""
    path = Path(path)
    shown = figures(results)
    written = [path]
    for name, (_, data) in shown.items():
        written.append(path.with_name(f"{path.stem}-{name}.png"))
        written[-1].write_bytes(data)
    settings = results["settings"]
    images = "".join(
        f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for c, data in shown.values()
    )
    groups = "".join(
        f"<h3>{html.escape(g)}</h3>{_table(by, results['methods'])}" for g, by in results["groups"].items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attnlrp evaluate: {html.escape(settings["suite"])}</title>
<style>body{{font:14px/1.5 system-ui,sans-serif;margin:24px;max-width:1200px}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}} small{{color:#777}} img{{max-width:100%}}</style></head>
<body><h1>Suite {html.escape(settings["suite"])} on {html.escape(settings["model"])}</h1>
<p>{results["kept"]} items kept of {results["tried"]} tried (the model got them right). Cells: mean [95%
percentile-bootstrap interval of the mean, 10,000 resamples].</p>
<table class="settings">{
        "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_setting(v))}</td></tr>" for k, v in settings.items())
    }</table>
{images}<h2>All methods</h2>{_table(results["metrics"], results["methods"])}
{f"<h2>Per group</h2>{groups}" if groups else ""}</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return written


def _setting(value) -> str:
    """A setting as people write it: lists comma-separated, yes/no, "–" for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
