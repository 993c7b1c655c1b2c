#!/usr/bin/env python
"""attnlrp side by side with its peers: LXT (efficient AttnLRP), Captum Integrated Gradients, Inseq.

    python benchmarks/peers.py            # full run; writes the "peers" section of docs/benchmarks.md
    python benchmarks/peers.py --quick    # smoke run: short inputs, one timed round; prints only
    python benchmarks/peers.py --setup    # only create the peers' virtual environments

Each peer runs in its own subprocess and its own virtual environment under ``.bench-venvs/`` (created
on demand, torch==2.13.0 pinned as in our own .venv), so that no peer's process-wide patches can touch
attnlrp, and each gets the transformers version it supports:

  lxt     lxt 2.1 (efficient mode: ``lxt.efficient.monkey_patch(modeling_llama)``) on transformers 4.52.4,
          the version its README names as tested. Installed with --no-deps: its declared dependencies
          (bitsandbytes, open_clip_torch, zennit, accelerate, …) are not imported by the LLaMA patches.
  captum  captum 0.9.0 on transformers 5.23.0: Integrated Gradients, 32 steps, zero-embedding baseline,
          ``internal_batch_size=8``.
  inseq   inseq 0.7.1 on transformers 5.23.0, installed with --no-deps (it declares the nvidia-*-cu11 CUDA
          wheels as hard Linux dependencies) plus exactly what it imports: captum, jaxtyping,
          typeguard<=2.13.3, treescope, rich, matplotlib, tqdm.

All systems load the same float32 SmolLM2-135M-Instruct weights (attnlrp's safetensors cache of the bundled
GGUF), run with torch.set_num_threads(2), and have their parameters frozen (input attributions only).
Our own numbers come from a worker process of the same kind, running in the main .venv.

Times: the workers are started once and kept; every timed round runs each configuration once, one after
the other (round-robin, one warm-up on a short input first), so that a burst of load on the shared machine
hits all of them alike; ratios are paired per round. Peak RSS: a fresh process per configuration with the
same method as benchmarks/overhead.py (short warm-up, peak mark reset through /proc/self/clear_refs,
``MALLOC_MMAP_THRESHOLD_=65536``): the memory one run needs on top of the loaded model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
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
ROOT = HERE.parent
VENVS = ROOT / ".bench-venvs"
WORKER = HERE / "peer_worker.py"
THREADS = 2
TORCH = "torch==2.13.0"  # the CPU build on this disk; an unpinned torch downloads a multi-GB CUDA build

#: Each peer's environment: pip install steps, run in order (a list starting with --no-deps is one step).
ENVIRONMENTS: dict[str, list[list[str]]] = {
    "lxt": [[TORCH, "transformers==4.52.4"], ["--no-deps", "lxt==2.1"]],
    "captum": [[TORCH, "transformers==5.23.0", "captum==0.9.0"]],
    "inseq": [
        [
            TORCH,
            "transformers==5.23.0",
            "captum==0.9.0",
            "jaxtyping==0.3.11",
            "typeguard==2.13.3",
            "treescope==0.1.10",
            "rich==15.0.0",
            "matplotlib==3.11.2",
            "tqdm==4.70.1",
        ],
        ["--no-deps", "inseq==0.7.1"],
    ],
}

TARGET_GEN_VS_STEP, TARGET_GEN_VS_INSEQ = 0.5, 5.0
BACKWARD_BATCH = 8  # explain_generation's default: generated tokens per segment and per batched backward


# --- virtual environments -------------------------------------------------------------------------


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str, log=print) -> Path:
    """Create .bench-venvs/NAME with its pinned packages, once (again only when the pins change)."""
    steps = ENVIRONMENTS[name]
    stamp_text = json.dumps(steps)
    folder = VENVS / name
    stamp = folder / ".installed"
    if stamp.is_file() and stamp.read_text() == stamp_text and venv_python(name).exists():
        return venv_python(name)
    log(f"  creating {folder.relative_to(ROOT)} ({'; '.join(' '.join(s) for s in steps)}) ...")
    started = time.perf_counter()
    if not venv_python(name).exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(venv_python(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for step in steps:
        out = subprocess.run(pip + step, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(step)} into {folder} failed:\n{out.stderr[-3000:]}")
    stamp.write_text(stamp_text)
    log(f"  {folder.relative_to(ROOT)} ready in {time.perf_counter() - started:.0f}s")
    return venv_python(name)


# --- workers --------------------------------------------------------------------------------------


def _env(memory: bool = False) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(THREADS),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
    )
    env.pop("PYTHONPATH", None)
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def _python_for(system: str) -> str:
    return sys.executable if system == "ours" else str(venv_python(system))


def _parse_reply(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("@@reply "):
            return json.loads(line[len("@@reply ") :])
    raise RuntimeError("no reply")


class Worker:
    """A long-lived worker process: one request at a time over stdin/stdout."""

    def __init__(self, system: str, model_dir: str, log_dir: Path):
        self.system = system
        self.log = open(log_dir / f"{system}.log", "w")  # noqa: SIM115 - closed in close(), with the worker
        self.proc = subprocess.Popen(
            [_python_for(system), str(WORKER), system, model_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                tail = Path(self.log.name).read_text()[-3000:]
                raise RuntimeError(f"the {self.system} worker exited (code {self.proc.poll()}):\n{tail}")
            if line.startswith("@@reply "):
                return json.loads(line[len("@@reply ") :])

    def request(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(
                f"{self.system} failed on {request.get('task')}/{request.get('config')}: "
                f"{reply['error']}\n{reply.get('traceback', '')}"
            )
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"task": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def measure_memory(system: str, model_dir: str, **request) -> dict:
    out = subprocess.run(
        [_python_for(system), str(WORKER), system, model_dir, "--memory", json.dumps(request)],
        capture_output=True,
        text=True,
        env=_env(memory=True),
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory run of {system} {request.get('task')} failed:\n{out.stderr[-3000:]}")
    return _parse_reply(out.stdout)


# --- the comparisons --------------------------------------------------------------------------------


#: (label, system, config) of the single-prediction comparison; "ours gradient" is the reference.
EXPLAIN = [
    ("attnlrp: plain Input×Gradient", "ours", "gradient"),
    ("attnlrp: AttnLRP", "ours", "attnlrp"),
    ("LXT 2.1 efficient AttnLRP", "lxt", ""),
    ("Captum IG, 32 steps", "captum", ""),
]
GENERATION = [
    ("attnlrp explain_generation (AttnLRP)", "ours", "shared"),
    ("attnlrp per-step recomputation (AttnLRP)", "ours", "per-step"),
    ("Inseq input_x_gradient", "inseq", ""),
    ("(the greedy `generate` call alone, part of every row above)", "ours", "generate"),
]


def token_ids(length: int, vocab: int = 49152) -> list[int]:
    """The same random ids as benchmarks/overhead.py (seeded by the length)."""
    import torch

    generator = torch.Generator().manual_seed(length)
    return torch.randint(1000, vocab, (1, length), generator=generator)[0].tolist()


def _agreement(a: list[float], b: list[float]) -> dict:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.abs(a).max()) or 1.0
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "relative": float(np.abs(a - b).max()) / scale,
        "corr": float(np.corrcoef(a, b)[0, 1]),
    }


def time_rounds(workers: dict, entries: list, request: dict, repeats: dict[str, int], log) -> dict:
    """Round-robin: each round runs every entry (that still needs runs) once. Returns label -> replies."""
    replies: dict[str, list[dict]] = {label: [] for label, _, _ in entries}
    rounds = max(repeats.values())
    for r in range(rounds):
        done = []
        for label, system, config in entries:
            if r >= repeats[label]:
                continue
            reply = workers[system].request(**request, config=config)
            replies[label].append(reply)
            done.append(f"{label.split(':')[-1].strip()} {reply['seconds']:.2f}s")
        log(f"    round {r + 1}/{rounds}: " + ", ".join(done))
    return replies


def summarise(replies: dict[str, list[dict]], reference: str) -> dict[str, dict]:
    ref = replies[reference]
    out = {}
    for label, rs in replies.items():
        times = [r["seconds"] for r in rs]
        paired = [r["seconds"] / g["seconds"] for r, g in zip(rs, ref)]
        out[label] = {
            "times": times,
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
            "ratio": statistics.median(paired),
            "ratio_min": min(paired),
            "ratio_max": max(paired),
            "runs": len(times),
            "last": rs[-1],
        }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short inputs, 1 round, prints only")
    parser.add_argument("--setup", action="store_true", help="only create the peers' virtual environments")
    parser.add_argument("--lengths", type=int, nargs="+", help="prompt lengths for the single prediction (512 1024)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5; Captum and the generation 3)")
    parser.add_argument("--captum-lengths", type=int, nargs="+", help="lengths Captum IG runs at (default 512)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--output", help="markdown file (default docs/benchmarks.md; none with --quick)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    log = lambda *a: print(*a, flush=True)
    log("peer environments:")
    for name in ENVIRONMENTS:
        ensure_venv(name, log)
    if args.setup:
        return

    import attnlrp
    from attnlrp.loading import cache_dir_for, default_model_file

    sys.path.insert(0, str(HERE))
    from _report import load_average, publish
    from overhead import generation_prompt_ids

    attnlrp.load_model()  # converts the bundled GGUF to the safetensors cache on first use
    model_dir = str(cache_dir_for(default_model_file()))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = args.lengths or ([64] if args.quick else [512, 1024])
    captum_lengths = args.captum_lengths or ([64] if args.quick else [512])
    repeats = args.repeats or (1 if args.quick else 5)
    slow_repeats = min(repeats, 3)
    new_tokens = 8 if args.quick else 32
    gen_ids = generation_prompt_ids(tokenizer)
    output = args.output or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    logs = VENVS / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    log(f"starting workers (model {model_dir}) ...")
    workers = {}
    try:
        for system in ("ours", "lxt", "captum", "inseq"):
            workers[system] = Worker(system, model_dir, logs)
            log(
                f"  {system}: torch {workers[system].info.get('torch')}, "
                f"transformers {workers[system].info.get('transformers')}"
            )
        loads = [load_average()]
        # warm-up: every configuration once on a short input
        for _, system, config in EXPLAIN:
            workers[system].request(task="explain", config=config, ids=token_ids(64)[:32])
        for _, system, config in GENERATION:
            workers[system].request(task="generation", config=config, ids=gen_ids, new_tokens=2)

        explain = {}
        for length in lengths:
            log(f"  single prediction, {length} tokens:")
            entries = [e for e in EXPLAIN if e[1] != "captum" or length in captum_lengths]
            reps = {label: (slow_repeats if system == "captum" else repeats) for label, system, _ in entries}
            replies = time_rounds(workers, entries, {"task": "explain", "ids": token_ids(length)}, reps, log)
            explain[length] = summarise(replies, EXPLAIN[0][0])
            loads.append(load_average())
        log(f"  generation, {new_tokens} tokens after a {len(gen_ids)}-token chat prompt:")
        replies = time_rounds(
            workers,
            GENERATION,
            {"task": "generation", "ids": gen_ids, "new_tokens": new_tokens},
            {label: slow_repeats for label, _, _ in GENERATION},
            log,
        )
        generation = summarise(replies, GENERATION[0][0])
        loads.append(load_average())
        versions = {s: w.info for s, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()

    memory: dict = {}
    if not args.no_memory:
        log("  peak memory (a fresh process per configuration) ...")
        for length in lengths:
            for label, system, config in EXPLAIN:
                if system == "captum" and length not in captum_lengths:
                    continue
                memory[(length, label)] = measure_memory(
                    system, model_dir, task="explain", config=config, ids=token_ids(length)
                )
        for label, system, config in GENERATION:
            memory[("gen", label)] = measure_memory(
                system, model_dir, task="generation", config=config, ids=gen_ids, new_tokens=new_tokens
            )
        loads.append(load_average())
    elapsed = time.perf_counter() - started
    report = markdown(
        explain,
        generation,
        memory,
        versions,
        loads,
        elapsed,
        repeats,
        slow_repeats,
        new_tokens,
        len(gen_ids),
        "python benchmarks/peers.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
    )
    publish("peers", report, output)


def _mem(memory, key, ref_key=None) -> tuple[str, str]:
    m = memory.get(key)
    if not m:
        return "–", "–"
    ref = memory.get(ref_key) if ref_key else None
    ratio = f"{m['peak_mib'] / ref['peak_mib']:.2f}" if ref and ref["peak_mib"] > 0 else "–"
    return f"{m['peak_mib']:.0f}{'' if m['exact'] else '*'}", ratio


def markdown(
    explain, generation, memory, versions, loads, elapsed, repeats, slow_repeats, new_tokens, prompt_tokens, command
) -> str:
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    v = {s: f"torch {i.get('torch')}, transformers {i.get('transformers')}" for s, i in versions.items()}
    out = [
        "## Side by side with the peers",
        "",
        f"Command: `{command}` (`make bench`). Date: {date}. Wall time: {elapsed / 60:.1f} min. "
        f"Load average (1 / 5 / 15 min) at the start, after each block and at the end: {' → '.join(loads)}.",
        "",
        "Each system runs in its own process and virtual environment (`.bench-venvs/`, created on demand): "
        f"attnlrp ({v['ours']}); LXT 2.1 efficient mode, `lxt.efficient.monkey_patch(modeling_llama)` ({v['lxt']}, "
        f"the version LXT's README names as tested); Captum 0.9.0 ({v['captum']}); Inseq 0.7.1 ({v['inseq']}). "
        "All load the same float32 SmolLM2-135M-Instruct weights (attnlrp's safetensors cache of the bundled GGUF), "
        "use 2 threads and have frozen parameters. LXT's venv has no torchvision: PyPI's Linux torchvision wheels "
        "link the CUDA build of torch and do not load next to the CPU torch 2.13.0, and lxt imports torchvision's "
        "ViT module only for its model map, so the worker gives that import an empty stand-in (the LLaMA patches "
        "are unaffected).",
        "",
        f"Times: median (min–max) of the timed runs ({repeats} rounds; Captum and the generation {slow_repeats}), "
        "configurations interleaved round by round after a short warm-up; × ratios are medians of per-round "
        "paired ratios. Peak MiB: what one run adds to the RSS of the loaded model, in a fresh process "
        "(method as in the overhead table).",
        "",
        "### One prediction: the top logit at the last position",
        "",
        "Random token ids (the same as in the overhead table), `inputs_embeds` and `logits_to_keep=1` for every "
        "system. Captum: Integrated Gradients, 32 steps, zero-embedding baseline, `internal_batch_size=8`, the "
        "target class found by one extra no-grad forward (included).",
        "",
        "| tokens | system | runs | median s (min–max) | × attnlrp gradient (paired) | × attnlrp AttnLRP (paired) "
        "| peak MiB | × gradient memory | agreement with attnlrp AttnLRP |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for length, by_label in explain.items():
        ours = by_label["attnlrp: AttnLRP"]
        for label, r in by_label.items():
            paired_ours = [t / o for t, o in zip(r["times"], ours["times"])]
            peak, mem_ratio = _mem(memory, (length, label), (length, EXPLAIN[0][0]))
            agree = "–"
            if label.startswith("LXT"):
                a = _agreement(r["last"]["relevance"], ours["last"]["relevance"])
                agree = (
                    f"max |ΔR| {a['max_abs_diff']:.1e} ({a['relative']:.1e} of max |R|), "
                    f"Δy {abs(r['last']['y'] - ours['last']['y']):.1e}"
                )
            elif label.startswith("Captum"):
                a = _agreement(r["last"]["relevance"], ours["last"]["relevance"])
                agree = f"a different method: correlation {a['corr']:.2f}"
            out.append(
                f"| {length} | {label} | {r['runs']} | {r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}) | "
                f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
                f"{statistics.median(paired_ours):.2f} | {peak} | {mem_ratio} | {agree} |"
            )
        lxt = by_label.get("LXT 2.1 efficient AttnLRP")
        if lxt:
            rel = statistics.median(o / t for o, t in zip(ours["times"], lxt["times"]))
            verdicts.append(f"- {length} tokens: attnlrp's AttnLRP takes {rel:.2f}× LXT's time (paired median).")
        cap = by_label.get("Captum IG, 32 steps")
        if cap:
            rel = statistics.median(c / o for c, o in zip(cap["times"], ours["times"]))
            verdicts.append(f"- {length} tokens: Captum IG (32 steps) takes {rel:.1f}× attnlrp's AttnLRP time.")
    g = generation
    shared, step, inseq, gen_alone = (g[label] for label, _, _ in GENERATION)
    per_step_rows = sum(prompt_tokens + i for i in range(new_tokens))  # each step's prefix, forward and backward
    segment_ends = [
        prompt_tokens - 1 + min(s + BACKWARD_BATCH, new_tokens) for s in range(0, new_tokens, BACKWARD_BATCH)
    ]
    ours_bwd = sum(
        end * (min(s + BACKWARD_BATCH, new_tokens) - s)
        for end, s in zip(segment_ends, range(0, new_tokens, BACKWARD_BATCH))
    )
    rows = dict(
        zip(
            [label for label, _, _ in GENERATION],
            [
                (prompt_tokens + new_tokens - 1, ours_bwd),
                (per_step_rows, per_step_rows),
                (per_step_rows, per_step_rows),
                (0, 0),
            ],
        )
    )
    out += [
        "",
        *verdicts,
        "",
        f"### A {new_tokens}-token generation, every generated token explained",
        "",
        f"The same {prompt_tokens}-token chat prompt as in the overhead section; greedy, exactly {new_tokens} new "
        "tokens, each explained against all tokens before it. Every approach includes its own `generate` call. "
        "attnlrp's `explain_generation` runs the forward pass once, in segments of 8 generated tokens over a "
        "key-value cache that keeps the graph, and one vectorised backward per segment that reaches back only "
        "through the segments before it (started below the LM head); per-step recomputation runs a fresh "
        "forward + backward per token (prefix only, `logits_to_keep=1`); Inseq's `input_x_gradient` with "
        '`attributed_fn="logit"` runs a forward + backward of each step\'s prefix (plain gradient, not LRP: '
        "the cheaper method, so the comparison flatters Inseq). Token rows: how many token positions pass "
        "through the transformer's layers in the forward and in the backward passes (the work, whatever the "
        "load; `generate` not counted).",
        "",
        "| approach | runs | median s (min–max) | × explain_generation (paired) | token rows fwd / bwd | peak MiB "
        "| same tokens as attnlrp |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in g.items():
        peak, _ = _mem(memory, ("gen", label))
        gen = r["last"]["generated"]
        same = (
            "–"
            if r is shared
            else (
                "yes"
                if gen == shared["last"]["generated"]
                else f"no ({sum(a == b for a, b in zip(gen, shared['last']['generated']))}/{new_tokens} equal)"
            )
        )
        fwd, bwd = rows[label]
        out.append(
            f"| {label} | {r['runs']} | {r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}) | "
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {fwd} / {bwd} | {peak} | {same} |"
        )
    vs_step = statistics.median(s / p for s, p in zip(shared["times"], step["times"]))
    vs_step_range = [s / p for s, p in zip(shared["times"], step["times"])]
    no_gen = statistics.median((s - q) / (p - q) for s, p, q in zip(shared["times"], step["times"], gen_alone["times"]))
    vs_inseq = inseq["ratio"]
    floor = (prompt_tokens + new_tokens - 1 + per_step_rows) / (2 * per_step_rows)
    out += [
        "",
        f"- explain_generation takes {vs_step:.3f}× the time of per-step recomputation (paired, "
        f"{min(vs_step_range):.2f}–{max(vs_step_range):.2f}; {no_gen:.2f}× leaving out the shared `generate` call) "
        f"and {(rows[GENERATION[0][0]][0] + ours_bwd) / (2 * per_step_rows):.2f}× its token rows. Target ≤ "
        f"{TARGET_GEN_VS_STEP}×: {'met' if vs_step <= TARGET_GEN_VS_STEP else 'missed'}. Exact relevance for every "
        "generated token needs one vector-Jacobian product per token, and the one for token i passes through "
        "all positions before it: the per-step backward rows are a floor for any exact method, and sharing "
        f"the forward can at best bring the work to {floor:.2f}× (a backward row costs about a forward row here: "
        "no parameter gradients).",
        f"- Inseq takes {vs_inseq:.1f}× the time of explain_generation (paired, {inseq['ratio_min']:.1f}–"
        f"{inseq['ratio_max']:.1f}) for {2 * per_step_rows / (rows[GENERATION[0][0]][0] + ours_bwd):.2f}× the "
        f"token rows. Target ≥ {TARGET_GEN_VS_INSEQ:.0f}×: {'met' if vs_inseq >= TARGET_GEN_VS_INSEQ else 'missed'}.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
