"""The figures of docs/latent.md on the bundled SmolLM2-135M-Instruct, and the cost of ``collect``.

usage: python benchmarks/latent.py [STEP ...]     (default: every step, in this order)

  atlas      collect every MLP neuron and the layer-14 SAE (``make sae``) over the labelled corpus (1,500
             sentences); ten labelled neurons with their purity
  ablation   the facts suite: ablate the top-k neurons of one MLP layer ranked by relevance, activation, random
  knowledge  knowledge units of the capital relation: suppress and enhance against random units
  steering   a strength sweep with the SAE latent whose label is the purest topic
  cost       collect against a plain forward + backward over the same tokens, side by side (medians, ratios)
  memory     peak memory of collect at 10k and 100k corpus tokens (fresh subprocesses)

Everything runs on the CPU with one thread per process. Work is kept in out/latent/ (the atlas is a
checkpoint, the ablation curves a journal: an interrupted run resumes) and each step rewrites its fenced
section of docs/latent.md (the rest of the page is written by hand).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _report import ROOT, cpu_name, load_average, median_range, replace_fenced, reset_peak, rss_kib

import attnlrp
from attnlrp.evaluate import kept_items
from attnlrp.latent import (
    FeatureAtlas,
    ablation_curves,
    ablation_table,
    collect,
    knowledge_units,
    labelled_corpus,
    load_sae,
    sweep,
)
from attnlrp.latent.corpus import TOPICS
from attnlrp.latent.sae import bundled_name
from attnlrp.methods import get_method
from attnlrp.tasks.causal_lm import CausalLM
from attnlrp.tasks.text import Item, encode

PAGE = ROOT / "docs" / "latent.md"
FIGURES = ROOT / "docs" / "img"
OUT = ROOT / "out" / "latent"
NEURONS = "model.layers.*.mlp.down_proj"
SAE_LAYER = 14
PER_TOPIC = 100
ABLATED = ("model.layers.8.mlp.down_proj", "model.layers.20.mlp.down_proj")
STEPS = ("atlas", "ablation", "knowledge", "steering", "cost", "memory")


def machine() -> str:
    return (
        f"{cpu_name()}, torch {torch.__version__}, 1 thread per process, load average {load_average()}, "
        f"{_dt.date.today().isoformat()}"
    )


def corpus(per_topic: int = PER_TOPIC) -> list[dict]:
    return [{"text": r.text, "topic": r.topic} for r in labelled_corpus(per_topic=per_topic)]


def atlas_of(model, tokenizer) -> FeatureAtlas:
    sae = load_sae(bundled_name(SAE_LAYER))
    atlas = collect(
        model,
        tokenizer,
        corpus(),
        [NEURONS, sae],
        top_k=16,
        batch_size=32,
        max_tokens=32,
        checkpoint=OUT / "atlas",
        every=4,
    )
    atlas.read_outputs().save(OUT / "atlas")
    return atlas


def _context(entry: dict) -> str:
    """A top context's text with the token where the unit peaks in bold."""
    peak = max(range(len(entry["activations"])), key=entry["activations"].__getitem__)

    def shown(i: int, token: str) -> str:
        core = token.strip()
        return token.replace(core, f"**{core}**") if i == peak and core else token

    return "".join(shown(i, t) for i, t in enumerate(entry["tokens"])).replace("|", "\\|").strip()


def step_atlas(model, tokenizer) -> None:
    started = time.perf_counter()
    atlas = atlas_of(model, tokenizer)
    seconds = time.perf_counter() - started
    rows, purities, topical = [], [], 0
    for site in atlas.sites:
        if not site.endswith("down_proj"):
            continue
        mass = atlas.relevance_mass(site)
        for unit in range(atlas.state(site).width):
            label = atlas.label(site, unit)
            purities.append(label.purity)
            if label.kind == "topic":
                topical += label.purity >= 0.5
                rows.append((label.purity, float(mass[unit]), site, unit, label))
    rows.sort(key=lambda r: (-r[0], -r[1]))
    chosen, topics = [], set()
    for *_, site, unit, label in rows:
        if label.text not in topics:
            topics.add(label.text)
            chosen.append((site, unit, label))
        if len(chosen) == 10:
            break
    lines = [
        "| neuron | label | purity (chance) | top context by activation (peak in bold) | promotes |",
        "|---|---|---:|---|---|",
    ]
    for site, unit, label in chosen:
        card = atlas.card(site, unit, conditional=0)
        promotes = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in card.promoted[:4])
        layer = site.split(".")[2]
        lines.append(
            f"| L{layer}:{unit} | {label.text} | {label.purity:.2f} ({label.chance:.2f}) | "
            f"{_context(card.top_activation[0])} | {promotes} |"
        )
    units = len(purities)
    collected = (
        f"collected in {seconds / 60:.0f} min (a resumed run counts only its own part)"
        if seconds >= 60
        else "read from the atlas a run before collected (the collection takes about an hour here)"
    )
    body = "\n".join(
        [
            f"Atlas: every MLP neuron of the 30 layers ({units} units) and the {atlas.state(f'model.layers.{SAE_LAYER}@sae').width} "
            f"latents of the layer-{SAE_LAYER} SAE, over {atlas.seen} sentences of the labelled corpus "
            f"({atlas.tokens} tokens), top-16 by activation and by AttnLRP relevance; {collected}. "
            f"{topical} neurons ({100 * topical / units:.1f}%) carry a topic "
            f"label with purity >= 0.5 (chance: one topic in 15, 0.07). The ten below are the purest, one per topic:",
            "",
            *lines,
            "",
            f"Machine: {machine()}. Command: `python benchmarks/latent.py atlas`.",
        ]
    )
    replace_fenced(PAGE, "latent-neurons", body)
    atlas.to_html(OUT / "atlas.html", sites=["model.layers.20.mlp.down_proj", f"model.layers.{SAE_LAYER}@sae"])
    print(body)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnlrp.render.palette import NEGATIVE, POSITIVE

    colours = {"relevance": [c / 255 for c in POSITIVE], "activation": [c / 255 for c in NEGATIVE], "random": "0.5"}
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (site, result) in zip(axes[0], results.items()):
        for ranking, curve in result["drops"].items():
            ks = [p["k"] for p in curve]
            x = [max(k, 0.5) for k in ks]
            ax.plot(x, [p["mean"] for p in curve], marker="o", ms=3, label=ranking, color=colours[ranking])
            ax.fill_between(x, [p["low"] for p in curve], [p["high"] for p in curve], alpha=0.2, color=colours[ranking])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("units ablated (k; 0 drawn at 0.5)")
        ax.set_ylabel("value lost (answer logit - mean logit)")
        ax.set_title(site, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def step_ablation(model, tokenizer) -> None:
    items, tried = kept_items(model, tokenizer, "facts", 60)
    results = {}
    for site in ABLATED:
        results[site] = ablation_curves(
            model, tokenizer, items, site, journal=OUT / f"ablation-{site.split('.')[2]}.jsonl"
        )
    FIGURES.mkdir(parents=True, exist_ok=True)
    _plot(results, FIGURES / "latent_ablation.png")
    parts = [
        f"{len(items)} facts the model gets right ({tried} tried); the value is the answer's logit minus the mean "
        f"logit ({results[ABLATED[0]]['curves']['random'][0]['mean']:.2f} on average before any ablation), and the "
        "top-k neurons of one MLP layer are set to zero at every position. The tables give the value lost "
        "(clean minus ablated, per fact), mean [95% bootstrap interval] over the facts, as does the figure.",
        "",
    ]
    for site, result in results.items():
        parts += [f"**{site}** ({result['settings']['method']} relevance)", "", ablation_table(result), ""]
    parts += [
        "![ablation curves](img/latent_ablation.png)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/latent.py ablation`.",
    ]
    body = "\n".join(parts)
    replace_fenced(PAGE, "latent-ablation", body)
    (OUT / "ablation.json").write_text(
        json.dumps({s: {k: v for k, v in r.items() if k != "records"} for s, r in results.items()}, indent=1)
    )
    print(body)


def step_knowledge(model, tokenizer) -> None:
    items, _ = kept_items(model, tokenizer, "facts", 200)
    capitals = [item for item in items if item.group == "capital"]
    others = [item for item in items if item.group not in ("capital", "landmark")][:40]  # landmarks name cities too
    atlas = FeatureAtlas.load(OUT / "atlas") if (OUT / "atlas" / "atlas.json").is_file() else None
    atlas = atlas if atlas is not None and atlas.complete else None  # labels from a finished atlas only
    prompts, answers = [i.prompt for i in capitals], [i.answer for i in capitals]
    plain = knowledge_units(model, tokenizer, prompts, answers, NEURONS, count=20, atlas=atlas)
    refined = knowledge_units(
        model, tokenizer, prompts, answers, NEURONS, count=20, atlas=atlas,
        contrast=([i.prompt for i in others], [i.answer for i in others]),
    )  # fmt: skip

    def named(found) -> str:
        return ", ".join(
            f"L{u['site'].split('.')[2]}:{u['unit']} ({u['label'] or 'unlabelled'})" for u in found.units[:6]
        )

    body = "\n".join(
        [
            f"The capital relation: {len(capitals)} facts the model gets right, split in half. The 20 MLP neurons "
            "with the highest mean share of relevance on the first half (one AttnLRP backward per prompt) are scaled "
            "by 0 (suppress) or 2 (enhance), against 20 random neurons of the same layers (5 draws). Answer "
            "probability, mean [95% bootstrap interval]. By mean share alone:",
            "",
            plain.table(),
            "",
            f"Its first six, with their atlas labels: {named(plain)}. Refined against {len(others)} facts of other "
            "relations (their mean share subtracted):",
            "",
            refined.table(),
            "",
            f"Its first six: {named(refined)}.",
            "",
            f"Machine: {machine()}. Command: `python benchmarks/latent.py knowledge`.",
        ]
    )
    replace_fenced(PAGE, "latent-knowledge", body)
    print(body)


#: Words that don't name a topic (stripped from the topic word lists to get each topic's concept words).
_COMMON = set("the a an and of on in at to with for by from its over near after during before across then".split())


def concept_words(topic: str) -> list[str]:
    """Content words that only this topic's word lists use."""

    def words(name: str) -> set[str]:
        return {
            w.strip(",.").lower()
            for part in TOPICS[name]
            for w in part.replace(";", " ").split()
            if len(w) > 3 and w.lower() not in _COMMON
        }

    others = set().union(*(words(t) for t in TOPICS if t != topic))
    return sorted(words(topic) - others)


def step_steering(model, tokenizer) -> None:
    atlas = FeatureAtlas.load(OUT / "atlas", model, tokenizer, [load_sae(bundled_name(SAE_LAYER))])
    site = f"model.layers.{SAE_LAYER}@sae"
    mass = atlas.relevance_mass(site)
    best = max(
        (u for u in range(atlas.state(site).width) if atlas.label(site, u).kind == "topic"),
        key=lambda u: (atlas.label(site, u).purity, float(mass[u])),
    )
    label = atlas.label(site, best)
    topic = label.text.removeprefix("topic: ")
    peak = atlas.stats(site, best)["activation_max"]
    strengths = [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
    prompts = ["I think that", "Yesterday, my friend", "The most important thing is", "When I woke up this morning,"]
    words = concept_words(topic)
    result = sweep(
        model, tokenizer, {(atlas.bound_sites[site].sae, best): peak}, strengths, words, prompts, max_new_tokens=16
    )
    body = "\n".join(
        [
            f"Steering with SAE latent {best} of layer {SAE_LAYER} ({label.text}, purity {label.purity:.2f}); mode "
            f"`add`: the strength times its peak activation in the atlas ({peak:.2f}) along its decoder direction. "
            f"Concept words: {', '.join(words)}. Concept probability: their first tokens' summed next-token "
            f"probability after the {len(prompts)} prompts; concept rate: the share of greedy 16-token continuations "
            "that name one; KL and perplexity over four neutral sentences.",
            "",
            result.table(),
            "",
            f"Machine: {machine()}. Command: `python benchmarks/latent.py steering`.",
        ]
    )
    replace_fenced(PAGE, "latent-steering", body)
    result.save(OUT / "steering.json")
    print(body)


# --- cost -------------------------------------------------------------------------------------------------


def _batches(model, tokenizer, texts: list[str], size: int):
    task = CausalLM(model, tokenizer)
    for start in range(0, len(texts), size):
        items = [Item(encode(tokenizer, t).ids[:32]) for t in texts[start : start + size]]
        yield task.prepare(items, task.targets(None, len(items)))


def _plain(model, tokenizer, texts: list[str]) -> None:
    """Forward + backward of the same targets with plain autograd (Input x Gradient): no rules, nothing read."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # as inside lrp: gradients of the inputs only
        p.requires_grad_(False)
    try:
        for batch in _batches(model, tokenizer, texts, 32):
            leaves = batch.leaves()
            batch.evaluate(leaves).sum().backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _lrp(model, tokenizer, texts: list[str]) -> None:
    method = get_method("attnlrp")
    for batch in _batches(model, tokenizer, texts, 32):
        method.attribute(batch)


def _collect(model, tokenizer, texts: list[str]) -> None:
    collect(model, tokenizer, texts, NEURONS, top_k=16, batch_size=32, max_tokens=32, progress=False)


def step_cost(model, tokenizer, rounds: int = 3) -> None:
    texts = [r["text"] for r in corpus()][:512]
    tokens = sum(min(len(tokenizer(t).input_ids), 32) for t in texts)
    configs = {"forward + backward, plain autograd": _plain, "forward + backward, AttnLRP": _lrp, "collect": _collect}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, run in configs.items():
            start = time.perf_counter()
            run(model, tokenizer, texts)
            if round_:
                times[name].append(time.perf_counter() - start)
        print(f"round {round_}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items() if t and round_))
    plain, lrp = times["forward + backward, plain autograd"], times["forward + backward, AttnLRP"]
    lines = [
        "| configuration | seconds, median (min–max) | ÷ plain, per round: median (min–max) | ÷ AttnLRP forward + backward, per round |",
        "|---|---:|---:|---:|",
    ]
    for name, values in times.items():
        over_plain = [v / p for v, p in zip(values, plain)]
        over_lrp = [v / r for v, r in zip(values, lrp)]
        lines.append(f"| {name} | {median_range(values)} | {median_range(over_plain)} | {median_range(over_lrp)} |")
    body = "\n".join(
        [
            f"{len(texts)} sentences of the labelled corpus ({tokens} tokens), batches of 32, every MLP neuron of the 30 "
            f"layers recorded (46,080 units; top-16 in both modes, histograms, statistics); {rounds} rounds after a "
            "warm-up, the configurations interleaved in each round:",
            "",
            *lines,
            "",
            f"Machine: {machine()}. Command: `python benchmarks/latent.py cost`.",
        ]
    )
    replace_fenced(PAGE, "latent-cost", body)
    print(body)


def step_memory(model, tokenizer) -> None:
    found = [json.loads(_memory_subprocess(n)) for n in (10_000, 100_000)]
    body = "\n".join(
        [
            "Peak memory of `collect` (a fresh process each; peak RSS during the run minus the RSS before it, glibc "
            "told to return freed blocks with `MALLOC_MMAP_THRESHOLD_=65536`) on the bundled model cut to its first "
            "6 layers, every MLP neuron of those layers (9,216 units, top-16; the cut only keeps the 100k-token run "
            "short). The per-unit state and the forward do not grow with the corpus; the context table does, up to "
            "its bound of 2k contexts per unit (295k here, far above these corpora, so it keeps every context, as "
            "compact token ids). A batch's transient memory grows with its width (its longest context), so both "
            "corpora start with the same batch of the 32 longest contexts of the labelled corpus.",
            "",
            "| corpus tokens | contexts | widest batch, tokens | seconds | peak MiB over the loaded model | "
            "contexts kept in the atlas |",
            "|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {m['tokens']} | {m['contexts']} | {m['width']} | {m['seconds']:.0f} | {m['peak_mib']:.0f}"
                f"{'' if m['exact'] else '*'} | {m['kept']} |"
                for m in found
            ),
            "",
            f"Machine: {machine()}. Command: `python benchmarks/latent.py memory`.",
        ]
    )
    replace_fenced(PAGE, "latent-memory", body)
    print(body)


def _memory_subprocess(tokens: int) -> str:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "memory-run", "--tokens", str(tokens)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout.strip().splitlines()[-1]


def memory_run(tokens: int) -> None:
    """One collect over ``tokens`` corpus tokens on the model cut to 6 layers; prints a JSON line."""
    torch.set_num_threads(1)
    model, tokenizer = attnlrp.load_model()
    model.model.layers = model.model.layers[:6]
    model.config.num_hidden_layers = 6
    records = [r.text for r in labelled_corpus(per_topic=600)]
    lengths = [min(len(tokenizer(text).input_ids), 32) for text in records]
    # Both corpus sizes start with the same batch of the longest contexts: a batch's transient memory grows with
    # its width, so each run meets the widest batch the corpus has, and the runs differ only in corpus size.
    widest = sorted(range(len(records)), key=lambda i: -lengths[i])[:32]
    order = widest + sorted(set(range(len(records))) - set(widest))
    texts, count, width = [], 0, 0
    for i in order:
        if count >= tokens:
            break
        texts.append(records[i])
        count, width = count + lengths[i], max(width, lengths[i])
    _collect(model, tokenizer, texts[:64])  # warm-up: allocator, kernels
    before = rss_kib("VmRSS")
    exact = reset_peak()
    start = time.perf_counter()
    atlas = collect(model, tokenizer, texts, NEURONS, top_k=16, batch_size=32, max_tokens=32, progress=False)
    seconds = time.perf_counter() - start
    peak = (rss_kib("VmHWM") - before) / 1024
    print(
        json.dumps(
            {"tokens": atlas.tokens, "contexts": atlas.seen, "seconds": seconds, "peak_mib": peak, "exact": exact,
             "kept": len(atlas.contexts), "width": width}
        )
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", help=f"any of {', '.join(STEPS)} (default: all)")
    parser.add_argument("--tokens", type=int, default=10_000, help="memory-run: corpus tokens")
    args = parser.parse_args()
    unknown = set(args.steps) - {*STEPS, "memory-run"}
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}: choose from {', '.join(STEPS)}")
    args.steps = args.steps or list(STEPS)
    if args.steps == ["memory-run"]:
        memory_run(args.tokens)
        return
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    model, tokenizer = attnlrp.load_model()
    for step in args.steps:
        started = time.perf_counter()
        globals()[f"step_{step}"](model, tokenizer)
        print(f"[{step}: {(time.perf_counter() - started) / 60:.1f} min]", flush=True)


if __name__ == "__main__":
    main()
