#!/usr/bin/env python
"""What a CPU + disk device map costs an explanation: SmolLM2-135M in memory against the same model with half its
decoder layers offloaded to disk (accelerate loads each layer's weights as it runs), side by side.

    python benchmarks/offload.py              # 256 tokens, 5 rounds; prints medians and the paired ratio

Both models explain the same prompt with AttnLRP through ``attnlrp.explain``, round-robin (the first round a
discarded warm-up), so a busy spell on the shared machine hits both alike; the relevance must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _report import cpu_name, load_average

import attnlrp


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    plain, tokenizer = attnlrp.load_model(dtype=torch.float32)
    layers = plain.config.num_hidden_layers
    device_map = {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" if i < layers // 2 else "disk" for i in range(layers)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    ids = torch.randint(1000, plain.config.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(0))
    prompt = ids.tolist()
    with tempfile.TemporaryDirectory() as folder:
        offloaded, _ = attnlrp.load_model(dtype=torch.float32, device_map=device_map, offload_folder=folder)
        models = {"in memory": plain, "half on disk": offloaded}
        times: dict[str, list[float]] = {name: [] for name in models}
        scores = {}
        for round_ in range(args.repeats + 1):
            for name, model in models.items():
                start = time.perf_counter()
                scores[name] = attnlrp.explain(model, tokenizer, prompt).scores
                if round_:
                    times[name].append(time.perf_counter() - start)
    same = scores["in memory"].tolist() == scores["half on disk"].tolist()
    paired = [d / m for d, m in zip(times["half on disk"], times["in memory"])]
    print(f"SmolLM2-135M float32, {args.tokens} tokens, AttnLRP, {cpu_name()}, 2 threads; load {load_average()}")
    for name in models:
        t = times[name]
        print(f"  {name}: median {statistics.median(t):.2f} s ({min(t):.2f}–{max(t):.2f}) over {len(t)} rounds")
    print(f"  half on disk / in memory: {statistics.median(paired):.2f}× (paired, {min(paired):.2f}–{max(paired):.2f})")
    print(f"  relevance identical: {same}")


if __name__ == "__main__":
    main()
