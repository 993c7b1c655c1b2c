"""Shared pieces of the benchmark scripts: the machine line, peak-RSS reading, and docs/benchmarks.md sections.

docs/benchmarks.md is written by several scripts (``make bench`` runs them one after another). Each owns
one section, fenced by ``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->``; writing a section replaces only
that section and keeps the others, in the order of ``SECTIONS``.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"

#: The sections of docs/benchmarks.md, in the order they appear, and the script that writes each.
SECTIONS = {
    "overhead": "benchmarks/overhead.py",
    "peers": "benchmarks/peers.py",
    "long-context": "benchmarks/long_context.py",
    "long-context-gemma": "benchmarks/long_context.py --model gemma",
    "profile": "benchmarks/profile_overhead.py",
    "gpu": "benchmarks/gpu.py",
}


def _fence(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def read_sections(text: str) -> dict[str, str]:
    found = {}
    for name in re.findall(r"<!-- bench:([\w-]+) -->", text):
        start, end = _fence(name)
        i, j = text.find(start), text.find(end)
        if i >= 0 and j > i:
            found[name] = text[i + len(start) : j].strip("\n")
    return found


def write_section(name: str, body: str, path: Path | str = DOC, order: dict[str, str] = SECTIONS) -> Path:
    """Replace (or add) section ``name`` of a page (by default the benchmarks page, whose sections are ``SECTIONS``);
    the other sections stay as they are, in the order of ``order``."""
    if name not in order:
        raise ValueError(f"unknown section {name!r}; add it to {'SECTIONS' if order is SECTIONS else 'the order'}")
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    sections = read_sections(text)
    if text.strip() and not sections and order is SECTIONS:  # a page from before the sections: the overhead table
        sections["overhead"] = text.strip("\n")
    sections[name] = body.strip("\n")
    parts = []
    for key in [*order, *(k for k in sections if k not in order)]:
        if key in sections:
            start, end = _fence(key)
            parts.append(f"{start}\n{sections[key]}\n{end}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def publish(name: str, report: str, output: Path | str | None) -> None:
    """Print a section's markdown and, unless ``output`` is None, write it as section ``name`` of that page."""
    print()
    print(report)
    if output:
        write_section(name, report, output)
        print(f"\nwritten to {output} (section {name!r})")


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = found.group(1) if found else cpu
    except OSError:
        pass
    return cpu


def rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that isn't allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def median_range(values: list[float], fmt: str = "{:.2f}") -> str:
    import statistics

    if not values:
        return "–"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def replace_fenced(path: Path | str, name: str, body: str) -> Path:
    """Replace the text between ``<!-- bench:NAME -->`` and its end fence in a hand-written page, keeping the rest;
    where the page has no such fence, the section is appended."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = _fence(name)
    block = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    text = text[:i] + block + text[j + len(end) :] if i >= 0 and j > i else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path
