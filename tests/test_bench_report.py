"""docs/benchmarks.md is written section by section by several benchmark scripts: one must not erase another's."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_report", Path(__file__).resolve().parent.parent / "benchmarks" / "_report.py"
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_a_section_replaces_only_itself_and_keeps_the_order(tmp_path):
    page = tmp_path / "benchmarks.md"
    report.write_section("peers", "## Peers\n\nold", page)
    report.write_section("overhead", "# Benchmarks\n\nfirst", page)
    report.write_section("peers", "## Peers\n\nnew", page)

    text = page.read_text()
    assert text.index("first") < text.index("## Peers")  # overhead comes first, whatever the writing order
    assert "new" in text and "old" not in text
    assert report.read_sections(text) == {"overhead": "# Benchmarks\n\nfirst", "peers": "## Peers\n\nnew"}


def test_a_page_from_before_the_sections_becomes_the_overhead_section(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Overhead of an explanation\n\n| a | b |\n")
    report.write_section("long-context", "## Long", page)
    sections = report.read_sections(page.read_text())
    assert sections["overhead"].startswith("# Overhead of an explanation")
    assert sections["long-context"] == "## Long"


def test_unknown_sections_are_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown section"):
        report.write_section("nonsense", "x", tmp_path / "b.md")
