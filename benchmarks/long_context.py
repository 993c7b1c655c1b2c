#!/usr/bin/env python
"""Long context on the CPU: explaining 2k, 4k and 8k-token prompts with SmolLM2-135M, time and peak memory.

    python benchmarks/long_context.py            # 2048 4096 8192 tokens; writes the "long-context" section
    python benchmarks/long_context.py --quick    # 256 and 512 tokens; prints only

Configurations (the same code as benchmarks/overhead.py): ``gradient`` (plain Input x Gradient), ``attnlrp``
and ``attnlrp+ckpt`` (AttnLRP with HF gradient checkpointing on every decoder layer). Every run uses
``logits_to_keep=1`` (only the explained position goes through the 49k-word LM head) and SDPA attention:
on the CPU, torch's flash-attention kernel computes softmax(q kᵀ) v block by block, so no T x T attention
matrix is ever stored, forward or backward. The scaling table shows what that buys: memory grows linearly
with the sequence length (the per-1k-token column stays flat), and checkpointing lowers the slope.

Each (configuration, length) runs in a fresh subprocess that loads the model, does a 32-token warm-up (under
torch.profiler, to record which attention kernel ran), resets the peak-RSS mark and times one explanation;
its peak RSS over the pre-run RSS is the memory that explanation needed (``MALLOC_MMAP_THRESHOLD_=65536``, as in
the overhead table, so that freed tensors leave RSS at once). With ``--repeats N`` each cell runs N times in
N fresh processes, rounds interleaved. SmolLM2's context (max_position_embeddings) is 8192 tokens, so 8k is
the longest prompt it can explain; longer lengths are refused unless ``--beyond-context`` is given.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = ("gradient", "attnlrp", "attnlrp+ckpt")
THREADS = 2


def measure_here(config: str, length: int) -> dict:
    """In the child: load, warm up (profiled), reset the peak mark, one timed run; report time and peak."""
    import torch
    from _report import reset_peak, rss_kib
    from overhead import load, run_once, token_ids
    from torch.profiler import ProfilerActivity, profile

    model, _ = load()
    ids = token_ids(model, length)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_once(model, config, ids[:, :32])
    names = {e.key for e in prof.key_averages()}
    kernels = sorted(n for n in names if "scaled_dot_product" in n)
    gc.collect()
    exact = reset_peak()
    before = rss_kib("VmRSS")
    start = time.perf_counter()
    y, total = run_once(model, config, ids)
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    return {
        "config": config,
        "length": length,
        "seconds": seconds,
        "peak_mib": (peak - before) / 1024,
        "baseline_mib": before / 1024,
        "exact": exact,
        "y": y,
        "conservation": total / y,
        "attention": model.config._attn_implementation,
        "kernels": kernels,
        "softmax_ops": sorted(n for n in names if "softmax" in n),
        "torch": torch.__version__,
    }


def measure(config: str, length: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(THREADS))
    out = subprocess.run(
        [sys.executable, __file__, "--_child", config, str(length)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config} at {length} tokens failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(
    results: dict,
    lengths: list[int],
    context: int,
    loads: list[str],
    elapsed: float,
    repeats: int,
    command: str,
    skipped: list[int],
) -> str:
    from _report import cpu_name

    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    any_run = next(iter(results.values()))[0]
    out = [
        "## Long context: 2k to 8k tokens on the CPU",
        "",
        f"Command: `{command}` (`make bench`). Date: {date}. Wall time: {elapsed / 60:.1f} min. "
        f"Load average (1 / 5 / 15 min) at the start, after each length: {' → '.join(loads)}.",
        "",
        f"SmolLM2-135M-Instruct, float32, {cpu_name()}, 2 threads, torch {any_run['torch']}; random token ids, "
        f"`logits_to_keep=1`, attention implementation `{any_run['attention']}`; the kernel that ran: "
        f"{', '.join(f'`{k}`' for k in any_run['kernels']) or '?'} (no softmax op over a T×T matrix ran: "
        f"{'none recorded' if not any_run['softmax_ops'] else ', '.join(any_run['softmax_ops'])}). "
        f"Each cell: {repeats} run{'s' if repeats != 1 else ''} in a fresh process (time of the explanation alone; "
        "peak MiB = peak RSS over the RSS of the loaded model, measured as in the overhead table). "
        "A stored attention matrix would take 9 heads × T² × 4 bytes per layer, 2.4 GiB per layer at 8k "
        "(72 GiB for the 30 layers a backward needs): the peaks below are far under that.",
        "",
        "| tokens | configuration | seconds | × gradient time | peak MiB | MiB per 1k tokens | × gradient memory | Σ R / y |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for length in lengths:
        ref = results.get(("gradient", length))
        for config in CONFIGS:
            runs = results.get((config, length))
            if not runs:
                continue
            t = statistics.median(r["seconds"] for r in runs)
            m = max(r["peak_mib"] for r in runs)
            t_ref = statistics.median(r["seconds"] for r in ref) if ref else None
            m_ref = max(r["peak_mib"] for r in ref) if ref else None
            span = (
                f" ({min(r['seconds'] for r in runs):.1f}–{max(r['seconds'] for r in runs):.1f})"
                if len(runs) > 1
                else ""
            )
            out.append(
                f"| {length} | {config} | {t:.1f}{span} | {t / t_ref:.2f} | {m:.0f}{'' if runs[0]['exact'] else '*'} | "
                f"{m / length * 1024:.0f} | {m / m_ref:.2f} | {runs[0]['conservation']:.3f} |"
            )
    out.append("")
    for config in CONFIGS:
        series = [(n, max(r["peak_mib"] for r in results[(config, n)])) for n in lengths if (config, n) in results]
        times = [
            (n, statistics.median(r["seconds"] for r in results[(config, n)]))
            for n in lengths
            if (config, n) in results
        ]
        if len(series) >= 2:
            (n0, m0), (n1, m1) = series[0], series[-1]
            (_, t0), (_, t1) = times[0], times[-1]
            out.append(
                f"- {config}: {n1 // n0}× the tokens ({n0} → {n1}) take {m1 / m0:.1f}× the memory and "
                f"{t1 / t0:.1f}× the time."
            )
    out.append(
        f"- SmolLM2's context is {context} tokens (max_position_embeddings); "
        + (
            f"{', '.join(map(str, skipped))} tokens exceed it and were not run (RoPE positions past the "
            "trained range: an explanation there would explain a model outside its domain; "
            "`attnlrp.explain` refuses such a prompt)."
            if skipped
            else "no longer prompt was asked for."
        )
    )
    out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 and 512 tokens; prints only")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 2048 4096 8192 16384)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per cell (default 1)")
    parser.add_argument("--beyond-context", action="store_true", help="also run lengths past the model's context")
    parser.add_argument("--output", help="markdown file (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--_child", nargs=2, metavar=("CONFIG", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(measure_here(args._child[0], int(args._child[1]))))
        return

    import json as _json

    from _report import load_average, publish

    from attnlrp.loading import cache_dir_for, default_model_file

    config_file = cache_dir_for(default_model_file()) / "config.json"
    if not config_file.is_file():  # first use: convert the bundled GGUF
        import attnlrp

        attnlrp.load_model()
    context = _json.loads(config_file.read_text())["max_position_embeddings"]
    asked = args.lengths or ([256, 512] if args.quick else [2048, 4096, 8192, 16384])
    lengths = [n for n in asked if n <= context or args.beyond_context]
    skipped = [n for n in asked if n not in lengths]
    output = args.output or (None if args.quick else str(HERE.parent / "docs" / "benchmarks.md"))
    command = "python benchmarks/long_context.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")

    started = time.perf_counter()
    loads = [load_average()]
    results: dict = {}
    for length in lengths:
        for _ in range(args.repeats):
            for config in CONFIGS:
                r = measure(config, length)
                results.setdefault((config, length), []).append(r)
                print(
                    f"  {length} tokens, {config}: {r['seconds']:.1f}s, peak {r['peak_mib']:.0f} MiB "
                    f"(load {load_average()})",
                    flush=True,
                )
        loads.append(load_average())
    for n in skipped:
        print(f"  {n} tokens: skipped, past the model's context of {context} tokens")
    report = markdown(results, lengths, context, loads, time.perf_counter() - started, args.repeats, command, skipped)
    publish("long-context", report, output)


if __name__ == "__main__":
    main()
