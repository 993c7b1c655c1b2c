#!/usr/bin/env python
"""What does an explanation cost? AttnLRP / CP-LRP against a plain forward and a plain gradient.

    python benchmarks/overhead.py            # full run (128, 512, 1024 tokens); writes docs/benchmarks.md
    python benchmarks/overhead.py --quick    # smoke run: 128 tokens, fewer repeats; prints only

Model: the bundled SmolLM2-135M-Instruct in float32, torch.set_num_threads(2), CPU.

Configurations, all timed side by side (round-robin: one run of each per round, so a burst of load
on a shared machine hits all of them alike; the first round is a discarded warm-up):

  forward       model(...) under torch.no_grad()
  gradient      Input x Gradient: the input embeddings are a leaf that requires grad, the parameters
                don't; forward + backward of the top logit. The reference for every ratio.
  attnlrp       the same inside ``attnlrp.lrp(model, method="attnlrp")`` (binding and unbinding included)
  cp-lrp        the same with method="cp-lrp"
  attnlrp+ckpt  attnlrp with HF activation (gradient) checkpointing on every decoder layer
                (model.train(): HF checkpoints only in training mode; the engine switches dropout off)

Every configuration calls the model with ``inputs_embeds`` (the same leaf-making code for all) and
``logits_to_keep=1``: only the explained position goes through the LM head, as an explanation of the
next token needs.

Peak memory: each configuration runs again in a fresh subprocess that loads the model, does one short
(32-token) warm-up run, resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``) and reads VmHWM
after one more run: "peak MiB" is that peak minus the RSS just before the run, i.e. the memory the run
itself needed on top of the weights. The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
glibc serves every large tensor with mmap and returns it on free: RSS then follows the live tensor
bytes closely instead of keeping freed heap (without it, the warm-up's freed memory would be reused
without raising RSS and the peaks would be understated). Where clear_refs is not writable the peak
of the first run over the post-load RSS is used (marked with *).

The last section times ``attnlrp.explain_generation`` (one forward over the whole sequence, one
backward per generated token through the retained graph) against recomputing a fresh forward +
backward for each generated token; both include the same greedy ``generate`` call.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import attnlrp
from attnlrp.engine import gradient_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, load_average, publish, read_sections, reset_peak, rss_kib, write_section

_LOAD_START = ["?"]

THREADS = 2
CONFIGS = ("forward", "gradient", "attnlrp", "cp-lrp", "attnlrp+ckpt")
ROOT = Path(__file__).resolve().parent.parent
TARGET_TIME, TARGET_MEMORY = 1.05, 1.10


# --- the model and one run of each configuration ------------------------------------------------


def load():
    torch.set_num_threads(THREADS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = attnlrp.load_model(dtype=torch.float32)
    model.eval()
    for p in model.parameters():  # Input x Gradient needs no parameter gradients (lrp does the same)
        p.requires_grad_(False)
    return model, tokenizer


def token_ids(model, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(1000, model.config.vocab_size, (1, length), generator=generator)


def run_once(model, config: str, ids: torch.Tensor) -> tuple[float, float]:
    """One run; returns (explained value y, Σ input relevance) (Σ relevance is nan for the forward)."""
    embeddings = model.get_input_embeddings()
    if config == "forward":
        with torch.no_grad():
            logits = model(inputs_embeds=embeddings(ids), use_cache=False, logits_to_keep=1).logits
        return float(logits[0, -1].max()), float("nan")
    method = {"gradient": None, "attnlrp": "attnlrp", "cp-lrp": "cp-lrp", "attnlrp+ckpt": "attnlrp"}[config]
    ckpt = gradient_checkpointing(model) if config == "attnlrp+ckpt" else nullcontext()
    bound = attnlrp.lrp(model, method=method) if method else nullcontext()
    with ckpt, bound, torch.enable_grad():
        x = embeddings(ids).detach().requires_grad_()
        y = model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1].max()
        y.backward()
        relevance = (x.detach() * x.grad).sum()
    return float(y.detach()), float(relevance)


# --- timing ------------------------------------------------------------------------------------------


def time_configs(model, length: int, repeats: int, configs=CONFIGS, log=print) -> dict[str, dict]:
    ids = token_ids(model, length)
    times: dict[str, list[float]] = {c: [] for c in configs}
    ratios: dict[str, float] = {}
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for config in configs:
            gc.collect()
            start = time.perf_counter()
            y, total = run_once(model, config, ids)
            elapsed = time.perf_counter() - start
            if round_ == 0:
                ratios[config] = total / y
                if config != "forward" and not (abs(total) < float("inf")):
                    raise FloatingPointError(f"{config} at {length} tokens: relevance is not finite ({total}).")
            else:
                times[config].append(elapsed)
        log(
            f"  {length} tokens, {'warm-up' if round_ == 0 else f'round {round_}/{repeats}'}: "
            + ", ".join(f"{c} {times[c][-1]:.2f}s" for c in configs if round_)
        )
    out = {}
    for c in configs:
        # Paired ratios: each run against the plain-gradient run of the same round (made seconds apart,
        # under the same load), so a slow spell on the shared machine cancels out of the ratio.
        paired = [t / g for t, g in zip(times[c], times["gradient"])]
        out[c] = {
            "times": times[c],
            "median": statistics.median(times[c]),
            "min": min(times[c]),
            "max": max(times[c]),
            "ratio": statistics.median(paired),
            "ratio_min": min(paired),
            "ratio_max": max(paired),
            "conservation": ratios[c],
        }
    return out


# --- memory: one fresh subprocess per configuration --------------------------------------------------


def measure_memory_here(config: str, length: int) -> dict:
    """Run in the child: load, warm up, reset the peak mark, run once; report MiB over the pre-run RSS."""
    model, _ = load()
    ids = token_ids(model, length)
    run_once(model, config, ids[:, :32])  # warm-up (short): lazy initialisations are not the run's memory
    gc.collect()
    exact = reset_peak()
    before = rss_kib("VmRSS")
    run_once(model, config, ids)
    peak = rss_kib("VmHWM")
    return {"peak_mib": (peak - before) / 1024, "baseline_mib": before / 1024, "exact": exact}


def measure_memory(config: str, length: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(THREADS))
    out = subprocess.run(
        [sys.executable, __file__, "--_memory", config, str(length)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory run {config} at {length} tokens failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- explain_generation against per-step recomputation -----------------------------------------------


GEN_PROMPT = [{"role": "user", "content": "Where is the Eiffel Tower, and why was it built? Answer briefly."}]


def generation_prompt_ids(tokenizer) -> list[int]:
    ids = tokenizer.apply_chat_template(GEN_PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(ids["input_ids"])


def greedy(model, tokenizer, ids: list[int], new_tokens: int) -> torch.Tensor:
    """The greedy continuation, exactly ``new_tokens`` long: prompt + generated ids."""
    prompt = torch.tensor([ids])
    with torch.no_grad():
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )[0]


def per_step_relevance(model, tokenizer, ids: list[int], new_tokens: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The baseline explain_generation must beat: generate, then a fresh forward + backward per generated token."""
    sequence = greedy(model, tokenizer, ids, new_tokens)
    n = len(ids)
    rows = []
    with attnlrp.lrp(model, method="attnlrp") as binding, torch.enable_grad():
        for i in range(sequence.shape[0] - n):
            logits = model(input_ids=sequence[None, : n + i], use_cache=False, logits_to_keep=1).logits
            logits[0, -1, sequence[n + i]].backward()
            e = binding.embeddings
            rows.append((e * e.grad).sum(-1)[0].detach())
    return sequence, rows


def time_generation(model, tokenizer, new_tokens: int, repeats: int, log=print) -> dict:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    ids = generation_prompt_ids(tokenizer)

    def shared():
        return attnlrp.explain_generation(model, tokenizer, ids, **kwargs)

    def generate():
        return greedy(model, tokenizer, ids, new_tokens)

    def per_step():
        return per_step_relevance(model, tokenizer, ids, new_tokens)[1]

    t_shared, t_step, t_generate = [], [], []
    reference = steps = None
    for round_ in range(repeats):  # the model is warm from the timings above: no warm-up round
        gc.collect()
        start = time.perf_counter()
        generate()
        t_generate.append(time.perf_counter() - start)
        gc.collect()
        start = time.perf_counter()
        reference = shared()
        elapsed_shared = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        steps = per_step()
        elapsed_step = time.perf_counter() - start
        t_shared.append(elapsed_shared)
        t_step.append(elapsed_step)
        log(
            f"  generation, round {round_ + 1}/{repeats}: explain_generation {elapsed_shared:.2f}s, "
            f"per-step {elapsed_step:.2f}s, generate alone {t_generate[-1]:.2f}s"
        )
    # The two must agree: the same relevance, computed two ways.
    diff = max(float((reference.matrix[i, : len(r)] - r.numpy()).__abs__().max()) for i, r in enumerate(steps))
    return {
        "new_tokens": len(reference),
        "prompt_tokens": reference.prompt_length,
        "shared": statistics.median(t_shared),
        "shared_range": (min(t_shared), max(t_shared)),
        "per_step": statistics.median(t_step),
        "per_step_range": (min(t_step), max(t_step)),
        "ratio": statistics.median(s / t for s, t in zip(t_step, t_shared)),
        "repeats": repeats,
        "generate": statistics.median(t_generate),
        "ratio_without_generate": statistics.median((s - g) / (t - g) for s, t, g in zip(t_step, t_shared, t_generate)),
        "max_abs_diff": diff,
        "text": "".join(reference.generated),
    }


# --- report ----------------------------------------------------------------------------------------


def machine_note() -> str:
    cpu = cpu_name()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    import transformers

    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({THREADS} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}; "
        f"load average (1 / 5 / 15 min) at the start {_LOAD_START[0]}, at the end {load} (a shared machine: "
        "other jobs may run alongside)"
    )


def table(results: dict[int, dict], memory: dict[int, dict]) -> list[str]:
    lines = [
        "| tokens | configuration | median s | min–max s | × gradient time (paired, min–max) | peak MiB "
        "| × gradient memory | Σ R / y |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for length, by_config in results.items():
        mem = memory.get(length, {})
        ref_mem = mem.get("gradient", {}).get("peak_mib")
        for config, r in by_config.items():
            m = mem.get(config)
            peak = f"{m['peak_mib']:.0f}{'' if m['exact'] else '*'}" if m else "–"
            mem_ratio = f"{m['peak_mib'] / ref_mem:.2f}" if m and ref_mem else "–"
            cons = "–" if config == "forward" else f"{r['conservation']:.3f}"
            lines.append(
                f"| {length} | {config} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | "
                f"{r['ratio']:.3f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {peak} | {mem_ratio} | {cons} |"
            )
    return lines


def verdicts(results: dict[int, dict], memory: dict[int, dict]) -> list[str]:
    lines = []
    for length, by_config in results.items():
        t = by_config["attnlrp"]["ratio"]
        mem = memory.get(length, {})
        parts = [f"time {t:.3f}x ({'meets' if t <= TARGET_TIME else 'misses'} ≤ {TARGET_TIME}x)"]
        if "attnlrp" in mem and "gradient" in mem:
            m = mem["attnlrp"]["peak_mib"] / mem["gradient"]["peak_mib"]
            parts.append(f"memory {m:.2f}x ({'meets' if m <= TARGET_MEMORY else 'misses'} ≤ {TARGET_MEMORY}x)")
            if "attnlrp+ckpt" in mem:
                c = mem["attnlrp+ckpt"]["peak_mib"] / mem["gradient"]["peak_mib"]
                parts.append(
                    f"with checkpointing memory {c:.2f}x of the plain gradient ({'below' if c < 1 else 'not below'} it)"
                )
        lines.append(f"- {length} tokens: AttnLRP " + "; ".join(parts))
    return lines


def markdown(command: str, results, memory, generation, elapsed: float, repeats: int) -> str:
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    baselines = [m["baseline_mib"] for by_config in memory.values() for m in by_config.values()]
    baseline = statistics.median(baselines) if baselines else None
    out = [
        "# Benchmarks",
        "",
        "`make bench` runs `benchmarks/overhead.py` (this first section), `benchmarks/peers.py` (attnlrp side by "
        "side with LXT, Captum and Inseq), `benchmarks/long_context.py` (2k–8k tokens) and "
        "`benchmarks/profile_overhead.py` (where the remaining overhead goes); each rewrites only its own section "
        "of this page. The machine is shared: read the load averages quoted in each section, and compare ratios "
        "measured side by side rather than absolute times across sections.",
        "",
        "## Overhead of an explanation",
        "",
        f"Command: `{command}` (`make bench`). Date: {date}. Wall time of the run: {elapsed / 60:.1f} min.",
        "",
        f"Machine: {machine_note()}.",
        "",
        "Model: SmolLM2-135M-Instruct (bundled), float32, `torch.set_num_threads(2)`, CPU; random token ids; "
        "`inputs_embeds` and `logits_to_keep=1` in every configuration; the explained value y is the top "
        "logit at the last position.",
        "",
        "Targets: AttnLRP ≤ 1.05× the plain gradient's time and ≤ 1.10× its memory; with activation "
        "checkpointing AttnLRP's memory should fall below the plain gradient's (checkpointing trades one "
        "more forward per layer for not keeping each layer's activations).",
        "",
        f"Times: median and min–max of {repeats} run{'s' if repeats != 1 else ''} per configuration after one warm-up run, the "
        "configurations interleaved round by round; × gradient time is the median of the paired ratios "
        "(each run over the plain-gradient run of the same round, made seconds apart under the same load). "
        "Peak MiB: the peak RSS a single run adds on top of the loaded model, measured in a fresh "
        "subprocess per configuration (after a short 32-token warm-up run, with the peak mark reset through "
        "`/proc/self/clear_refs` and glibc told to mmap every large block, `MALLOC_MMAP_THRESHOLD_=65536`, "
        "so that freed tensors leave RSS at once). Σ R / y: the input relevance over the explained logit "
        "(CP-LRP conserves it exactly on this bias-free model; AttnLRP loses some at every softmax)."
        + (f" The loaded model itself takes about {baseline:.0f} MiB of RSS." if baseline else ""),
        "",
        *table(results, memory),
        "",
        *verdicts(results, memory),
        "",
    ]
    if generation:
        g = generation
        out += [
            "### `explain_generation` against per-step recomputation",
            "",
            f"A chat prompt of {g['prompt_tokens']} tokens, {g['new_tokens']} generated tokens (greedy), AttnLRP. "
            "Both include the same `generate` call; per-step recomputation runs a fresh forward + backward "
            "(with `logits_to_keep=1`) for each generated token.",
            "",
            "| approach | median s | min–max s |",
            "|---|---:|---:|",
            f"| explain_generation (one shared forward, vectorised backward) | {g['shared']:.2f} | "
            f"{g['shared_range'][0]:.2f}–{g['shared_range'][1]:.2f} |",
            f"| per-step recomputation | {g['per_step']:.2f} | {g['per_step_range'][0]:.2f}–{g['per_step_range'][1]:.2f} |",
            f"| (the `generate` call alone, included in both) | {g['generate']:.2f} | |",
            "",
            f"Per-step recomputation takes {g['ratio']:.2f}× as long as explain_generation (median of "
            f"{g['repeats']} paired run{'s' if g['repeats'] != 1 else ''}); leaving out the shared `generate` call, "
            f"{g['ratio_without_generate']:.2f}×. "
            f"The two give the same relevance (max |difference| {g['max_abs_diff']:.1e}).",
            "",
        ]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 tokens only, fewer repeats, prints only")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 128 512 1024)")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration after the warm-up (default 5)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument("--no-generation", action="store_true", help="skip the explain_generation timing")
    parser.add_argument("--output", help="markdown file to write (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--_memory", nargs=2, metavar=("CONFIG", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory:
        print(json.dumps(measure_memory_here(args._memory[0], int(args._memory[1]))))
        return

    lengths = args.lengths or ([128] if args.quick else [128, 512, 1024])
    repeats = args.repeats or (3 if args.quick else 5)
    new_tokens = 8 if args.quick else 32
    output = args.output or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    command = "python benchmarks/overhead.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")

    started = time.perf_counter()
    _LOAD_START[0] = load_average()
    model, tokenizer = load()
    print(f"SmolLM2-135M-Instruct float32, {THREADS} threads; lengths {lengths}, {repeats} runs each after a warm-up")
    results = {}
    for length in lengths:
        results[length] = time_configs(model, length, repeats)
    memory: dict[int, dict] = {}
    if not args.no_memory:
        for length in lengths:
            memory[length] = {}
            for config in CONFIGS:
                memory[length][config] = measure_memory(config, length)
            print(f"  memory at {length} tokens done")
    generation = None
    if not args.no_generation:
        generation = time_generation(model, tokenizer, new_tokens, 1 if args.quick else 3)
    elapsed = time.perf_counter() - started

    report = markdown(command, results, memory, generation, elapsed, repeats)
    publish("overhead", report, output)
    if output and "gpu" not in read_sections(Path(output).read_text(encoding="utf-8")):
        write_section("gpu", gpu_note(), output)


def gpu_note() -> str:
    """The GPU section, until a session with a GPU measures it (this script runs on the CPU only)."""
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d")
    return "\n".join(
        [
            "## bf16 on a GPU",
            "",
            f"Not measured: the sessions that produced these tables ({date}) had no GPU (CPU-only machine, and no GPU "
            "was lent to the task). The bf16 GPU table (AttnLRP vs the plain gradient in time and memory, with and "
            "without checkpointing) is still to be measured on a machine with one; nothing on this page is a GPU "
            "figure.",
        ]
    )


if __name__ == "__main__":
    main()
