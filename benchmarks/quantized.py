#!/usr/bin/env python
"""Quantized models against their float twins: the table of docs/quantization.md.

    python benchmarks/quantized.py                 # every backend configuration (about 15 minutes on 2 cores)
    python benchmarks/quantized.py bnb-nf4 hqq-4   # some of them

For each configuration, tests/quantized_probe.py (run in .venv-quant, which `make test` creates) loads the bundled
SmolLM2-135M-Instruct quantized, explains three prompts with AttnLRP, and compares the relevance with that of its
float twin (the same model with every quantized weight dequantized to float32), on a fresh model and again after one
``model.generate``. Columns: the worst correlation over the prompts; the per-token error relative to the prompt's
largest score (median and maximum over all tokens); the relative difference of the explained logit (how far the
quantized forward pass is from the float one); and, for scale, the correlation with the original float32 model,
which measures what quantization itself changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"


def row(name: str, figures: dict) -> str:
    before, after = figures["before"], figures["after"]

    def stage(f: dict) -> str:
        return f"{f['correlation']:.6f} | {f['median_error']:.1e} / {f['max_error']:.1e}"

    return (
        f"| {figures['backend']} | {figures['scheme']} | {figures['bits']} | {', '.join(figures['layers'])} | "
        f"{stage(before)} | {stage(after)} | {max(before['logit_error'], after['logit_error']):.1e} | "
        f"{figures['vs_float32']['correlation']:.3f} |"
    )


def main(names: list[str]) -> None:
    if not QUANT_PYTHON.exists():
        sys.exit("the quantization environment is missing: run `make .venv-quant/.installed` first")
    done = subprocess.run(
        [str(QUANT_PYTHON), str(ROOT / "tests" / "quantized_probe.py"), "models", *names],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"') and line.endswith("}"):  # the probe's lines, not a library's printouts
            results.update(json.loads(line))
    print(
        "| backend | scheme | bits | layer | before generate: correlation | per-token error (median / max) "
        "| after generate: correlation | per-token error (median / max) | logit difference | vs float32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, figures in results.items():
        print(row(name, figures))


if __name__ == "__main__":
    main(sys.argv[1:])
