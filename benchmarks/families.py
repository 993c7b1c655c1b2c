#!/usr/bin/env python
"""The family matrix under ``attnlrp.check``: each family's worst relative conservation error.

    python benchmarks/families.py            # every family of tests/tiny_models.py (about a minute)
    python benchmarks/families.py bloom gpt2 # some of them

Each family is built tiny from its config (2 layers, hidden 64, random weights, float64; the models of
tests/test_check.py) and checked: CP-LRP on a copy with biases and learned constants zeroed. Columns: the
modules checked, the end-to-end relative error (Σ input relevance against the target), the worst
relative error of any module (|Σ R_in − Σ R_out| / max(Σ|R_in|, Σ|R_out|)), the ops without a rule and
the verdict. Errors near 1e-8 come from float32 casts inside the model (RMSNorm, routers, softmax); a
model without them conserves to 1e-16. Prints a Markdown table.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

# the tiny model matrix is the test suite's; this script reports it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_models import EXTENDED, FAMILIES, build

import attnlrp


def main(names: list[str]) -> int:
    warnings.simplefilter("ignore")  # transformers' notes on configs
    print("| family | model | modules | end to end | worst module | unruled ops | check |")
    print("|---|---|---:|---:|---:|---:|---|")
    failed = 0
    for name in names:
        fam = build(name)
        report = attnlrp.check(fam.model, fam.inputs)
        failed += not report.ok
        print(
            f"| {name}{' (extended)' if name in EXTENDED else ''} | {report.model} | {len(report.flow.modules)} "
            f"| {report.end_to_end.error:.1e} | {report.worst:.1e} | {len(report.audit.unruled)} "
            f"| {'ok' if report.ok else 'LEAKS: ' + ', '.join(m.path or '<root>' for m in report.leaks)} |"
        )
    print(f"\n{len(names) - failed} of {len(names)} families conserve (rtol 1e-06).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or FAMILIES + EXTENDED))
