#!/usr/bin/env python
"""On a GPU machine: a cuda:0 + CPU device map checked against the model on one GPU, and the bf16 table.

    python benchmarks/gpu.py                 # the split check, then the table; writes the "gpu" section
    python benchmarks/gpu.py --quick         # 512 and 1024 tokens, 2 repeats; prints only
    python benchmarks/gpu.py --device cpu --dtype float32 --quick --models smollm2   # a smoke run without a GPU

1. The split: SmolLM2-135M in bf16 with half its decoder layers on cuda:0 and half offloaded to CPU memory
   (accelerate runs them on cuda:0, loading their weights as they run), and, with two GPUs or more, split over
   the GPUs; through ``attnlrp.explain`` the relevance must equal that of the model on one GPU, the per-layer
   relevance of ``attnlrp.Recorder`` must lie on the input device, and the target must be read where the LM head
   put its logits.
2. The table: time and peak GPU memory of AttnLRP against the plain gradient (Input x Gradient), with and
   without HF gradient checkpointing, in bf16, for SmolLM2-135M and Gemma-3-270M (``make gemma``), at several
   lengths. Every configuration runs in the same process, round-robin (one run of each per round, the first
   round a discarded warm-up), so a busy GPU slows all alike: medians of the rounds, and each run's ratio to the
   gradient run of its round. Peak memory: ``torch.cuda.max_memory_allocated`` over what the loaded model holds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from long_context import MODELS, gemma_file, run_once  # noqa: E402

import attnlrp  # noqa: E402
from attnlrp.engine import gradient_checkpointing  # noqa: E402
from attnlrp.engine.devices import execution_device, input_device  # noqa: E402

CONFIGS = ("gradient", "gradient+ckpt", "attnlrp", "attnlrp+ckpt")
PROMPT = "The Eiffel Tower is located in the city of"


def load(name: str, dtype: torch.dtype, device_map) -> tuple:
    source = gemma_file() if name == "gemma" else None
    model, tokenizer = attnlrp.load_model(source, dtype=dtype, device_map=device_map)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


# --- 1. the split ------------------------------------------------------------------------------------------


def split_maps(model, device: str) -> dict[str, dict[str, str | int]]:
    """Device maps that split the decoder layers: half on ``device`` and half offloaded to CPU memory; with two
    GPUs or more, also half on each of the first two GPUs."""
    layers = model.config.num_hidden_layers
    base = {"model.embed_tokens": device, "model.norm": device, "model.rotary_emb": device, "lm_head": device}
    maps = {
        f"{device} + CPU offload": {
            **base,
            **{f"model.layers.{i}": device if i < layers // 2 else "cpu" for i in range(layers)},
        }
    }
    if torch.cuda.device_count() >= 2:
        maps["cuda:0 + cuda:1"] = {  # the LM head (tied to the embeddings) on cuda:0, the last layers on cuda:1
            **base,
            "model.norm": 1,
            **{f"model.layers.{i}": 0 if i < layers // 2 else 1 for i in range(layers)},
        }
    return maps


def check_split(device: str, dtype: torch.dtype, log=print) -> list[str]:
    """The split check; returns its lines for the page (and raises where a check fails)."""
    plain, tokenizer = load("smollm2", dtype, device)
    want = attnlrp.explain(plain, tokenizer, PROMPT)
    lines = []
    for label, device_map in split_maps(plain, device).items():
        model, _ = load("smollm2", dtype, device_map)
        got = attnlrp.explain(model, tokenizer, PROMPT)
        same = got.scores.tolist() == want.scores.tolist()
        close = bool(torch.allclose(torch.as_tensor(got.scores), torch.as_tensor(want.scores), rtol=1e-2, atol=1e-3))
        ids = torch.tensor([tokenizer(PROMPT)["input_ids"]], device=input_device(model))
        with attnlrp.Recorder(model, "model.layers.*") as rec, attnlrp.lrp(model):
            logits = model(input_ids=ids).logits
            logits[0, -1].max().backward()
        head = execution_device(model.get_output_embeddings())
        on_input = all(r.device == input_device(model) for r in rec.relevance.values())
        line = (
            f"- {label}: target {got.target!r} (one GPU: {want.target!r}); relevance "
            f"{'identical' if same else 'equal within bf16 rounding' if close else 'DIFFERENT'}; logits on "
            f"{logits.device} (the LM head runs on {head}); {len(rec.relevance)} layer recordings on "
            f"{'the input device ' + str(input_device(model)) if on_input else 'several devices'}."
        )
        log(line)
        lines.append(line)
        if got.target != want.target or not close or not on_input or logits.device != head:
            raise AssertionError(line)
        del model
    return lines


# --- 2. the table ------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_config(model, config: str, ids: torch.Tensor) -> tuple[float, float]:
    """One run of a configuration: long_context.run_once, with checkpointing for the gradient too."""
    if config == "gradient+ckpt":
        with gradient_checkpointing(model):
            return run_once(model, "gradient", ids)
    return run_once(model, config, ids)


def table(name: str, device: str, dtype: torch.dtype, lengths: list[int], repeats: int, log=print) -> list[dict]:
    from overhead import token_ids

    model, _ = load(name, dtype, device)
    rows = []
    for length in lengths:
        ids = token_ids(model, length).to(device)
        times = {c: [] for c in CONFIGS}
        peaks = {}
        for round_ in range(repeats + 1):  # round 0: warm-up, and the peak memory of each configuration
            for config in CONFIGS:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    held = torch.cuda.memory_allocated()
                synchronize(device)
                start = time.perf_counter()
                _, total = run_config(model, config, ids)
                synchronize(device)
                elapsed = time.perf_counter() - start
                if round_ == 0:
                    peaks[config] = (
                        (torch.cuda.max_memory_allocated() - held) / 2**20 if device.startswith("cuda") else None
                    )
                    if not abs(total) < float("inf"):
                        raise FloatingPointError(f"{name}, {config} at {length} tokens: relevance {total}")
                else:
                    times[config].append(elapsed)
            if round_:
                log(
                    f"  {name} {length} tokens, round {round_}: "
                    + ", ".join(f"{c} {times[c][-1]:.3f}s" for c in CONFIGS)
                )
        for config in CONFIGS:
            rows.append(
                {
                    "model": MODELS[name][0],
                    "length": length,
                    "config": config,
                    "median": statistics.median(times[config]),
                    "ratio": statistics.median(t / g for t, g in zip(times[config], times["gradient"])),
                    "peak": peaks[config],
                    "memory_ratio": peaks[config] / peaks["gradient"] if peaks["gradient"] else None,
                }
            )
    del model
    return rows


def markdown(command: str, device: str, dtype: torch.dtype, split: list[str], rows: list[dict], repeats: int) -> str:
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    out = [
        "## bf16 on a GPU",
        "",
        f"Command: `{command}`. Date: {date}. {name}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}.",
        "",
        "Device maps (`attnlrp.explain` against the model on one GPU):",
        "",
        *split,
        "",
        f"Time: median of {repeats} interleaved rounds after a warm-up; × gradient: the median of each run's ratio to "
        "the plain gradient of its round. Peak MiB: `torch.cuda.max_memory_allocated` over the loaded model.",
        "",
        "| model | tokens | configuration | seconds | × gradient time | peak MiB | × gradient memory |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak']:.0f}" if r["peak"] is not None else "–"
        memory = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "–"
        out.append(
            f"| {r['model']} | {r['length']} | {r['config']} | {r['median']:.3f} | {r['ratio']:.2f} | {peak} | {memory} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0", help="default cuda:0")
    parser.add_argument("--dtype", default="bfloat16", help="default bfloat16")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["smollm2", "gemma"])
    parser.add_argument("--lengths", type=int, nargs="+", help="default 1024 4096 8192 (Gemma also 32768)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="512 and 1024 tokens, 2 repeats; prints only")
    parser.add_argument("--output", help="markdown file (default docs/benchmarks.md; none with --quick)")
    args = parser.parse_args(argv)
    from _report import publish

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No GPU here: run this on a GPU machine (or --device cpu for a smoke run).")
    dtype = getattr(torch, args.dtype)
    repeats = 2 if args.quick else args.repeats
    command = "python benchmarks/gpu.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    split = check_split(args.device, dtype)
    rows = []
    for name in args.models:
        lengths = args.lengths or (
            [512, 1024] if args.quick else [1024, 4096, 8192, *([32768] if name == "gemma" else [])]
        )
        context = 8192 if name == "smollm2" else 32768
        rows += table(name, args.device, dtype, [n for n in lengths if n <= context], repeats)
    output = args.output or (None if args.quick else str(HERE.parent / "docs" / "benchmarks.md"))
    publish("gpu", markdown(command, args.device, dtype, split, rows, repeats), output)


if __name__ == "__main__":
    main()
