"""The faithfulness figures of docs/evaluation.md: every suite on the bundled SmolLM2, every method side by side.

usage: python benchmarks/evaluation.py [--limit 200] [--suites needle,facts,ioi,agreement,perturbation]

Runs ``attnlrp.evaluate.run_suite`` per suite into out/evaluation/ (journals there: an interrupted run resumes,
and a finished one only rebuilds the page), copies the report figures to docs/img/evaluation/ and rewrites the
"results" section of docs/evaluation.md (the other sections are written by hand).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _report import ROOT, cpu_name, load_average, write_section

import attnlrp
from attnlrp.evaluate import kept_items, metrics, run_suite, write_report
from attnlrp.evaluate.report import COLUMNS
from attnlrp.tasks.causal_lm import prepare_batch

PAGE = ROOT / "docs" / "evaluation.md"
FIGURES = ROOT / "docs" / "img" / "evaluation"
OUT = ROOT / "out" / "evaluation"
ORDER = {"intro": "by hand", "results": "benchmarks/evaluation.py", "findings": "by hand"}

EVERY = [
    "attnlrp",
    "cp-lrp",
    "input_x_gradient",
    "gradient",
    "integrated_gradients",
    "attention",
    "attention_rollout",
    "occlusion",
    "random",
]
#: Per run: (suite, output name, methods, options). The needle's 2,048-token haystacks leave out the methods whose
#: cost grows with the length times a factor (IG's 32 steps, occlusion's one forward per token) and the attention
#: maps (eager attention materialises every layer's T x T matrix).
RUNS = [
    ("agreement", "agreement", EVERY, {}),
    ("ioi", "ioi", EVERY, {}),
    ("facts", "facts", EVERY, {}),
    ("perturbation", "perturbation", EVERY, {}),
    (
        "perturbation",
        "perturbation-first-kept",
        ["attnlrp", "cp-lrp", "input_x_gradient", "random"],
        {"exclude_first": True},
    ),
    ("needle", "needle", ["attnlrp", "cp-lrp", "input_x_gradient", "gradient", "random"], {}),
]
#: What each suite is judged by, and the baselines AttnLRP must beat with non-overlapping intervals.
JUDGED = {"needle": "pointing", "facts": "pointing", "ioi": "pointing", "agreement": "pointing", "perturbation": "abpc"}
RIVALS = ("input_x_gradient", "random")
FACTS_CONTRAST_METHODS = ("attnlrp", "cp-lrp", "input_x_gradient", "gradient", "random")
#: The suites whose groups get a table of their own: what a group is.
GROUPED = {"needle": "context length (tokens)", "facts": "relation", "perturbation": "source of the prompt"}


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def _table(by_method: dict, methods: list[str], keys: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(COLUMNS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in methods:
        lines.append(
            f"| {m} | " + " | ".join(_cell(by_method[m][k]) if k in by_method[m] else "–" for k in keys) + " |"
        )
    return lines


def _verdict(results: dict, key: str) -> str:
    ours = results["metrics"]["attnlrp"][key]
    parts = []
    for rival in RIVALS:
        other = results["metrics"][rival][key]
        apart = ours["low"] > other["high"]
        parts.append(
            f"{rival} {other['mean']:.3f}: "
            + (
                "intervals apart"
                if apart
                else ("overlapping intervals" if ours["mean"] >= other["mean"] else "**AttnLRP is behind**")
            )
        )
    return f"AttnLRP {ours['mean']:.3f} on {COLUMNS[key]} against " + "; ".join(parts) + "."


def section(name: str, results: dict, figures: list[Path]) -> list[str]:
    suite, settings = results["settings"]["suite"], results["settings"]
    judged = JUDGED[suite]
    keys = ["abpc", "comprehensiveness", "sufficiency"] if results["curves"] else ["pointing", "recovery"]
    keys += ["pointing_no_first", "first_share", "seconds"] if not results["curves"] else ["first_share", "seconds"]
    options = "first token never ranked nor perturbed" if settings["exclude_first"] else ""
    spent = sum(results["metrics"][m]["seconds"]["mean"] * results["kept"] for m in results["methods"])
    out = [
        f"### {name}" + (f" ({options})" if options else ""),
        "",
        f"{results['kept']} items kept of {results['tried']} tried (the model got them right); {spent / 60:.1f} min "
        "of explaining and scoring, all methods together.",
        "",
    ]
    out += _table(results["metrics"], results["methods"], keys)
    out += ["", "- " + _verdict(results, judged), ""]
    if suite in GROUPED:
        out += [f"{COLUMNS[judged]} by {GROUPED[suite]}:", ""]
        groups = list(results["groups"])
        out += ["| method | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for m in results["methods"]:
            out.append(
                f"| {m} | " + " | ".join(f"{results['groups'][g][m][judged]['mean']:.2f}" for g in groups) + " |"
            )
        out += [
            "",
            "Items per group: "
            + ", ".join(f"{g} {results['groups'][g][results['methods'][0]][judged]['n']}" for g in groups)
            + ".",
            "",
        ]
    for figure in figures:
        out += [f"![{name}: {figure.stem.split('-')[-1]}](img/evaluation/{figure.name})", ""]
    return out


def zeroing_effects(model, tokenizer, limit: int) -> list[str]:
    """How much the perturbation suite's explained value drops when one thing's input embeddings are zeroed: the
    first token, the evidence, one other token (random, seeded). Is the first token's relevance earned?"""
    items, _ = kept_items(model, tokenizer, "perturbation", limit)
    batch = prepare_batch(
        model,
        tokenizer,
        [item.prompt for item in items],
        [item.target(tokenizer) for item in items],
        padding_side="left",
    )
    rng = random.Random(0)
    chosen: dict[str, list[list[int]]] = {
        "the first token": [],
        "the evidence (all its tokens)": [],
        "one other token": [],
    }
    for row, item in enumerate(items):
        evidence = item.evidence_positions(tokenizer)
        others = [
            p for p in range(1, batch.spans["tokens"][row].stop - batch.spans["tokens"][row].start) if p not in evidence
        ]
        for name, positions in zip(chosen, ([0], evidence, [rng.choice(others)])):
            chosen[name].append([batch.spans["tokens"][row].start + p for p in positions])
    out = ["| zeroed | drop of the explained value (mean [95% interval]) |", "|---|---|"]
    with torch.no_grad():
        for name, positions in chosen.items():
            embeds = batch.inputs["tokens"].clone()
            for row, at in enumerate(positions):
                embeds[row, at] = 0
            drops = (batch.clean - batch.values({"tokens": embeds}, range(len(items)))).tolist()
            out.append(f"| {name} | {_cell(metrics.summary(drops))} |")
    clean = metrics.summary(batch.clean.tolist())
    return [
        f"The explained value (answer's logit minus the mean logit) is {_cell(clean)} on these {len(items)} items.",
        "",
        *out,
        "",
    ]


def facts_contrast(model, tokenizer, limit: int) -> list[str]:
    """Pointing game on the facts suite when the explained value is the answer's logit against the runner-up
    answer of the same relation (another continent, another sport) instead of the bare logit: does the relation
    word win because it raises every answer of its kind?"""
    items, _ = kept_items(model, tokenizer, "facts", limit)
    answer_of = {item.id: item.answer_id(tokenizer) for item in items}
    answers: dict[str, set[int]] = {}
    for item in items:
        answers.setdefault(item.group, set()).add(answer_of[item.id])
    kept, contrasts = [], []
    for item in items:
        rivals = sorted(answers[item.group] - {answer_of[item.id]})
        if not rivals:
            continue
        with torch.no_grad():
            last = model(input_ids=torch.tensor([tokenizer(item.prompt).input_ids]), logits_to_keep=1).logits[0, -1]
        kept.append(item)
        contrasts.append(attnlrp.Contrast(answer_of[item.id], max(rivals, key=lambda t: float(last[t]))))
    prompts = [item.prompt for item in kept]
    evidence = [item.evidence_positions(tokenizer) for item in kept]
    out = ["| method | the answer's logit | the answer against the runner-up answer |", "|---|---|---|"]
    for method in FACTS_CONTRAST_METHODS:
        cells = []
        for target in ([answer_of[item.id] for item in kept], contrasts):
            exps = attnlrp.explain(model, tokenizer, prompts, target=target, method=method, batch_size=16)
            cells.append(metrics.summary([metrics.pointing_game(e.scores, ev) for e, ev in zip(exps, evidence)]))
        out.append(f"| {method} | {_cell(cells[0])} | {_cell(cells[1])} |")
    return [
        f"Pointing game on the {len(kept)} facts items whose relation has more than one answer in the suite "
        "(the runner-up: the other answer of the same relation with the highest logit):",
        "",
        *out,
        "",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--suites", default=",".join(dict.fromkeys(s for s, *_ in RUNS)))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    wanted = args.suites.split(",")
    model, tokenizer = attnlrp.load_model(dtype=torch.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    body = [
        "## Results on the bundled model",
        "",
        f"Command: `python benchmarks/evaluation.py --limit {args.limit}` (`make evaluation`). "
        f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC. SmolLM2-135M-Instruct, float32, "
        f"{cpu_name()}, torch {torch.__version__}. Cells: mean [95% percentile-bootstrap interval of the mean]. "
        "Seconds per item are wall time on a shared 2-core machine (other jobs ran alongside): read them as "
        "relative costs.",
        "",
    ]
    for suite, name, methods, options in RUNS:
        if suite not in wanted:
            continue
        results = run_suite(model, tokenizer, suite, methods, args.limit, OUT / f"{name}.json", **options)
        written = write_report(results, OUT / f"{name}.html")
        figures = []
        for png in written[1:]:
            figures.append(FIGURES / png.name)
            shutil.copyfile(png, figures[-1])
        body += section(name, results, figures)
        if name == "perturbation":
            body += ["#### Zeroing one part of the prompt", "", *zeroing_effects(model, tokenizer, args.limit)]
        if name == "facts":
            body += ["#### The answer against its rivals", "", *facts_contrast(model, tokenizer, args.limit)]
    body.append(
        f"Wall time of this run: {(time.perf_counter() - started) / 60:.1f} min; load average at the end "
        f"{load_average()}."
    )
    write_section("results", "\n".join(body), PAGE, ORDER)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
