#!/usr/bin/env python
"""Dataset throughput on one machine: length-bucketed batches, a per-prompt loop and Inseq's batched attribute.

    python benchmarks/throughput.py                  # 1000 prompts per mix; writes the "throughput" section
    python benchmarks/throughput.py --prompts 300    # fewer prompts per mix
    python benchmarks/throughput.py --quick          # 24 prompts per mix, no Inseq, prints only
    python benchmarks/throughput.py --processes 2    # also 2 processes under torchrun: work and time per shard

Two length mixes of text prompts (seeded): short, 16-128 tokens, and mixed, 16-512 tokens. Three ways to explain
the next token of every prompt with AttnLRP on the bundled SmolLM2-135M (float32, 2 threads): ``attnlrp.explain``
on the whole list (batches of up to 16 prompts of similar length), a per-prompt loop (one call per prompt, the
reference library's way), and Inseq 0.7.1's batched ``attribute`` (input x gradient of one generated token, batch
size 16; in its own venv, as benchmarks/peers.py builds it). The plain gradient, bucketed and per prompt through
the same call, is the ceiling: what batching gains a forward and backward pass with no LRP rules on this machine. Padding waste is the share of padded tokens in the
batches: for the length-bucketed plan, and for the same batches in input order (how they were made before).
The bucketed and per-prompt results are compared token by token.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import cpu_name, load_average, replace_fenced  # noqa: E402

import attnlrp  # noqa: E402
from attnlrp.methods.batch import TOKEN_BUDGET, plan  # noqa: E402

ROOT = HERE.parent
MIXES = {"short": (16, 128), "mixed": (16, 512)}
BATCH = 16
WORDS = (
    "the river runs through an old town where people sell bread fish and wool on market days while children play "
    "near the stone bridge and travellers rest at the inn before they cross the hills to the next valley in spring "
    "farmers plant barley and in autumn the fair brings music lanterns and stories from far away places"
).split()


def prompts(tokenizer, count: int, low: int, high: int, seed: int) -> list[str]:
    """``count`` texts whose token counts are spread uniformly over [low, high]."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        goal = rng.randint(low, high)
        words = [rng.choice(WORDS) for _ in range(goal)]
        while len(words) > 1 and len(tokenizer(" ".join(words)).input_ids) > goal:
            words.pop()
        texts.append(" ".join(words).capitalize())
    return texts


def waste(lengths: list[int], groups: list[list[int]]) -> float:
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return 1 - sum(lengths) / padded


def run_inseq(texts: list[str], log) -> float | str | None:
    """Seconds of Inseq's batched attribute over ``texts``; None where its venv can't be built, and what happened
    where its worker died (killed for memory, say)."""
    from peers import Worker, ensure_venv

    from attnlrp.loading import cache_dir_for, default_model_file

    try:
        ensure_venv("inseq", log)
    except RuntimeError as error:
        log(f"  Inseq skipped: {error}")
        return None
    with tempfile.TemporaryDirectory() as logs:
        worker = Worker("inseq", str(cache_dir_for(default_model_file())), Path(logs))
        try:
            worker.request(task="batch", texts=texts[:2], batch_size=BATCH)  # warm-up
            return worker.request(task="batch", texts=texts, batch_size=BATCH)["seconds"]
        except RuntimeError as error:
            code = worker.proc.poll()
            what = "killed (out of memory)" if code == -9 else f"failed (exit code {code})"
            log(f"  Inseq {what}: {str(error).splitlines()[0]}")
            return what
        finally:
            worker.close()


def measure(model, tokenizer, texts: list[str], inseq: bool, log) -> dict:
    lengths = [len(tokenizer(t).input_ids) for t in texts]
    attnlrp.explain(model, tokenizer, texts[:2], batch_size=BATCH)  # warm-up
    start = time.perf_counter()
    bucketed = attnlrp.explain(model, tokenizer, texts, batch_size=BATCH)
    t_bucketed = time.perf_counter() - start
    log(f"    bucketed batches: {t_bucketed:.1f} s")
    start = time.perf_counter()
    alone = [attnlrp.explain(model, tokenizer, t) for t in texts]
    t_alone = time.perf_counter() - start
    log(f"    per-prompt loop: {t_alone:.1f} s")
    diffs = [np.abs(a.scores - b.scores).max() / np.abs(b.scores).max() for a, b in zip(bucketed, alone)]
    start = time.perf_counter()  # the reverse order (loop, then batches) evens out a drift of the machine's speed
    for t in texts:
        attnlrp.explain(model, tokenizer, t, method="gradient")
    t_gradient_alone = time.perf_counter() - start
    start = time.perf_counter()
    attnlrp.explain(model, tokenizer, texts, method="gradient", batch_size=BATCH)
    t_gradient_bucketed = time.perf_counter() - start
    log(f"    plain gradient, bucketed / per prompt: {t_gradient_bucketed:.1f} s / {t_gradient_alone:.1f} s")
    t_inseq = run_inseq(texts, log) if inseq else None
    if isinstance(t_inseq, float):
        log(f"    Inseq batched attribute: {t_inseq:.1f} s")
    return {
        "prompts": len(texts),
        "tokens": sum(lengths),
        "bucketed_s": t_bucketed,
        "per_prompt_s": t_alone,
        "inseq_s": t_inseq,
        "gradient_bucketed_s": t_gradient_bucketed,
        "gradient_per_prompt_s": t_gradient_alone,
        "waste_bucketed": waste(lengths, plan(lengths, BATCH, TOKEN_BUDGET, by_length=True)),  # explain()'s plan
        "waste_in_order": waste(lengths, plan(lengths, BATCH)),
        "max_relative_difference": float(max(diffs)),
        "same_targets": all(a.target_id == b.target_id for a, b in zip(bucketed, alone)),
    }


def processes(texts: list[str], count: int, log) -> list[str]:
    """Run ``count`` processes under torchrun (gloo, one thread each) over ``texts``; their summary lines."""
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "prompts.jsonl"
        source.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={count}",
            "-m",
            "attnlrp",
            "explain",
            "--input",
            str(source),
            "--output",
            str(Path(work) / "out.jsonl"),
            "--batch-size",
            str(BATCH),
            "--no-color",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        shards = sorted(line.replace(f"{work}/", "") for line in done.stdout.splitlines() if line.startswith("shard "))
        log("\n".join(f"    {s}" for s in shards))
        return shards


def report(results: dict, shards: list[str], command: str, started: float, loads: list) -> str:
    lines = [
        "### Measured: throughput on one machine",
        "",
        f"Command: `{command}`. Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min. SmolLM2-135M-Instruct, float32, {cpu_name()}, "
        f"torch {torch.__version__} (2 threads); load average at the start {loads[0]}, at the end {loads[-1]} "
        "(a shared machine: read the ratios, measured side by side in one run).",
        "",
        "| mix | prompts | tokens | bucketed batches s | per-prompt loop s | speed-up | Inseq batched s | "
        "padding waste, bucketed | padding waste, input order | max relative difference | "
        "plain gradient: bucketed s / per-prompt s (speed-up) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mix, r in results.items():
        inseq = f"{r['inseq_s']:.1f}" if isinstance(r["inseq_s"], float) else r["inseq_s"] or "–"
        lines.append(
            f"| {mix} ({MIXES[mix][0]}–{MIXES[mix][1]} tokens) | {r['prompts']} | {r['tokens']} | "
            f"{r['bucketed_s']:.1f} | {r['per_prompt_s']:.1f} | {r['per_prompt_s'] / r['bucketed_s']:.2f}x | {inseq} | "
            f"{r['waste_bucketed']:.1%} | {r['waste_in_order']:.1%} | {r['max_relative_difference']:.1e} | "
            f"{r['gradient_bucketed_s']:.1f} / {r['gradient_per_prompt_s']:.1f} "
            f"({r['gradient_per_prompt_s'] / r['gradient_bucketed_s']:.2f}x) |"
        )
    lines += [
        "",
        "Explanations per second (bucketed / per-prompt"
        + (" / Inseq" if any(isinstance(r["inseq_s"], float) for r in results.values()) else "")
        + "): "
        + "; ".join(
            f"{mix}: {r['prompts'] / r['bucketed_s']:.2f} / {r['prompts'] / r['per_prompt_s']:.2f}"
            + (f" / {r['prompts'] / r['inseq_s']:.2f}" if isinstance(r["inseq_s"], float) else "")
            for mix, r in results.items()
        )
        + ".",
    ]
    if shards:
        lines += [
            "",
            "Processes under torchrun (gloo, one thread each), the mixed prompts:",
            "",
            *[f"- {s}" for s in shards],
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, help="prompts per mix (default 1000; 24 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few prompts, no Inseq, prints only")
    parser.add_argument("--processes", type=int, default=0, help="also run this many processes under torchrun")
    parser.add_argument("--no-inseq", action="store_true", help="skip Inseq")
    parser.add_argument("--output", help="page to write (default docs/scaling.md; none with --quick)")
    args = parser.parse_args(argv)
    count = args.prompts or (24 if args.quick else 1000)
    output = args.output or (None if args.quick else str(ROOT / "docs" / "scaling.md"))
    command = "python benchmarks/throughput.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    torch.set_num_threads(2)
    started, loads = time.perf_counter(), [load_average()]
    model, tokenizer = attnlrp.load_model()
    results = {}
    for seed, (mix, (low, high)) in enumerate(MIXES.items()):
        texts = prompts(tokenizer, count, low, high, seed)
        print(f"  {mix}: {count} prompts of {low}-{high} tokens")
        results[mix] = measure(model, tokenizer, texts, not (args.quick or args.no_inseq), print)
    shards = processes(prompts(tokenizer, count, *MIXES["mixed"], 1), args.processes, print) if args.processes else []
    loads.append(load_average())
    text = report(results, shards, command, started, loads)
    print(text)
    if output:
        print(f"written to {replace_fenced(output, 'throughput', text)}")


if __name__ == "__main__":
    main()
