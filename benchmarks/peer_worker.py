#!/usr/bin/env python
"""One system under test, in its own process and (for the peers) its own virtual environment.

Started by benchmarks/peers.py; not meant to be run by hand. Two ways to run:

    python peer_worker.py SYSTEM MODEL_DIR            serve: one JSON request per stdin line, one reply line
    python peer_worker.py SYSTEM MODEL_DIR --memory REQUEST_JSON
                                                      one warm-up, reset the peak-RSS mark, one run; print the peak

SYSTEM is one of ``ours`` (this repository's attnlrp, from the main .venv), ``lxt`` (lxt 2.1 efficient mode),
``captum`` (Captum Integrated Gradients) or ``inseq`` (Inseq input_x_gradient). Each loads the same float32
SmolLM2-135M-Instruct weights from MODEL_DIR (attnlrp's safetensors cache of the bundled GGUF).

Requests (JSON): ``{"task": "explain", "config": C, "ids": [...]}`` explains the top logit at the last position
of the given token ids; ``{"task": "generation", "config": C, "ids": [...], "new_tokens": N}`` explains an
N-token greedy generation after the prompt ids; ``{"task": "batch", "texts": [...], "batch_size": B}`` (Inseq)
explains the next token of every text with Inseq's batched ``attribute``. Replies carry the seconds of the run and what it computed
(the explained value, Σ relevance, relevance per token, generated ids), so that peers.py can check that the
systems did the same work.

This file imports only the standard library, torch, transformers and benchmarks/_report.py (standard library
only) at the top: it runs in every venv.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.simplefilter("ignore")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import reset_peak, rss_kib  # noqa: E402  (standard library only: importable in every venv)

THREADS = 2
REPLY = "@@reply "  # replies are marked: libraries may print to stdout too
IG_STEPS, IG_BATCH = 32, 8


def _freeze(model):
    model.eval()
    for p in model.parameters():  # input attributions only: no parameter gradients (as attnlrp.lrp does)
        p.requires_grad_(False)
    return model


def _top_logit_relevance(model, ids, context=None):
    """Input x (modified) gradient of the top logit at the last position: the efficient-LRP recipe."""
    from contextlib import nullcontext

    embeddings = model.get_input_embeddings()
    with context or nullcontext(), torch.enable_grad():
        x = embeddings(ids).detach().requires_grad_()
        y = model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1].max()
        y.backward()
        relevance = (x.detach() * x.grad).sum(-1)[0]
    return float(y.detach()), relevance


# --- the systems ------------------------------------------------------------------------------------


class Ours:
    """This repository: plain gradient, AttnLRP through attnlrp.lrp, explain_generation, per-step recomputation."""

    def __init__(self, model_dir: str):
        from overhead import greedy, per_step_relevance

        import attnlrp

        self.attnlrp, self.per_step_relevance, self.greedy = attnlrp, per_step_relevance, greedy
        self.model, self.tokenizer = attnlrp.load_model(model_dir, dtype=torch.float32)
        _freeze(self.model)

    def explain(self, config: str, ids):
        context = self.attnlrp.lrp(self.model, method="attnlrp") if config == "attnlrp" else None
        y, relevance = _top_logit_relevance(self.model, ids, context)
        return {"y": y, "relevance": relevance.tolist()}

    def generation(self, config: str, ids, new_tokens: int):
        if config == "generate":  # the greedy generation alone, which every approach includes
            sequence = self.greedy(self.model, self.tokenizer, ids[0].tolist(), new_tokens)
            return {"generated": sequence[ids.shape[1] :].tolist(), "rows": 0}
        if config == "per-step":
            sequence, rows = self.per_step_relevance(self.model, self.tokenizer, ids[0].tolist(), new_tokens)
            return {"generated": sequence[ids.shape[1] :].tolist(), "rows": len(rows)}
        g = self.attnlrp.explain_generation(
            self.model, self.tokenizer, ids[0].tolist(), max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
        return {"generated": g.token_ids[g.prompt_length :], "rows": len(g)}


class LXT:
    """lxt 2.1, efficient mode: ``lxt.efficient.monkey_patch(modeling_llama)`` before the model is built."""

    def __init__(self, model_dir: str):
        import types

        import transformers
        from transformers.models.llama import modeling_llama

        # lxt.efficient's model map imports torchvision.models.vision_transformer at import time. PyPI's Linux
        # torchvision wheels link the CUDA build of torch (libtorch_cuda.so) and fail to load next to the CPU
        # torch 2.13.0 of this venv, so torchvision is not installed; an empty stand-in module satisfies the
        # import (only the LLaMA patches are used) and is removed again at once.
        names = ("torchvision", "torchvision.models", "torchvision.models.vision_transformer")
        stand_ins = {n: types.ModuleType(n) for n in names if n not in sys.modules}
        if "torchvision.models.vision_transformer" in stand_ins:
            stand_ins["torchvision.models.vision_transformer"].nn = torch.nn
        sys.modules.update(stand_ins)
        try:
            from lxt.efficient import monkey_patch
        finally:
            for n in stand_ins:
                sys.modules.pop(n, None)
        monkey_patch(modeling_llama)
        self.version = transformers.__version__
        # The cache was written by transformers 5, which keeps RoPE's base in "rope_parameters"; transformers 4
        # reads "rope_theta" and would silently fall back to its default (10000 instead of SmolLM2's 100000).
        config = modeling_llama.LlamaConfig.from_pretrained(model_dir)
        rope = json.loads((Path(model_dir) / "config.json").read_text()).get("rope_parameters")
        if rope:
            config.rope_theta = rope["rope_theta"]
            if rope.get("rope_type", "default") != "default":
                config.rope_scaling = dict(rope)
        self.model = _freeze(
            modeling_llama.LlamaForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32)
        )

    def explain(self, config: str, ids):
        y, relevance = _top_logit_relevance(self.model, ids)
        return {"y": y, "relevance": relevance.tolist()}


class Captum:
    """Captum Integrated Gradients (32 steps, zero-embedding baseline) of the top logit at the last position."""

    def __init__(self, model_dir: str):
        from captum.attr import IntegratedGradients
        from transformers import AutoModelForCausalLM

        self.model = _freeze(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
        forward = lambda e: self.model(inputs_embeds=e, use_cache=False, logits_to_keep=1).logits[:, -1]
        self.ig = IntegratedGradients(forward)

    def explain(self, config: str, ids):
        x = self.model.get_input_embeddings()(ids).detach()
        with torch.no_grad():
            logits = self.model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1]
        target = int(logits.argmax())
        attributions = self.ig.attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS, internal_batch_size=IG_BATCH
        )
        return {"y": float(logits[target]), "relevance": attributions.sum(-1)[0].tolist()}


class Inseq:
    """Inseq 0.7.1, ``input_x_gradient`` of each generated token's logit (attributed_fn="logit")."""

    def __init__(self, model_dir: str):
        import inseq

        self.model = inseq.load_model(model_dir, "input_x_gradient", model_kwargs={"dtype": torch.float32})
        self.model.model.eval()
        self.tokenizer = self.model.tokenizer

    def generation(self, config: str, ids, new_tokens: int):
        prompt = self.tokenizer.decode(ids[0].tolist())
        out = self.model.attribute(
            prompt,
            generation_args={"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False},
            attributed_fn="logit",
            show_progress=False,
            pretty_progress=False,
        )
        seq = out.sequence_attributions[0]
        # a decoder-only model: the prompt and the generation are both in ``target`` (source is empty)
        generated = [t.id for t in seq.target][-new_tokens:]
        return {
            "generated": generated,
            "rows": int(seq.target_attributions.shape[1]),
            "prompt_tokens": len(seq.target) - new_tokens,
        }

    def batch(self, texts: list[str], batch_size: int):
        """Inseq's batched ``attribute`` of the next token of every text (one generated token each)."""
        out = self.model.attribute(
            texts,
            generation_args={"max_new_tokens": 1, "min_new_tokens": 1, "do_sample": False},
            attributed_fn="logit",
            batch_size=batch_size,
            show_progress=False,
            pretty_progress=False,
        )
        return {"explained": len(out.sequence_attributions)}


SYSTEMS = {"ours": Ours, "lxt": LXT, "captum": Captum, "inseq": Inseq}


def run(system, request: dict) -> dict:
    ids = torch.tensor([request.get("ids", [])])
    gc.collect()
    start = time.perf_counter()
    if request["task"] == "batch":
        out = system.batch(request["texts"], request["batch_size"])
    elif request["task"] == "explain":
        out = system.explain(request.get("config", ""), ids)
    else:
        out = system.generation(request.get("config", ""), ids, request["new_tokens"])
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv: list[str]) -> None:
    name, model_dir = argv[0], argv[1]
    torch.set_num_threads(THREADS)
    system = SYSTEMS[name](model_dir)
    info = {"system": name, "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if len(argv) > 3 and argv[2] == "--memory":
        request = json.loads(argv[3])
        warm = dict(request, ids=request["ids"][:32])
        if request["task"] == "generation":
            warm["new_tokens"] = 2
        run(system, warm)  # lazy initialisations are not the run's memory
        gc.collect()
        exact = reset_peak()
        before = rss_kib("VmRSS")
        out = run(system, request)
        peak = rss_kib("VmHWM")
        reply = {
            "peak_mib": (peak - before) / 1024,
            "baseline_mib": before / 1024,
            "exact": exact,
            "seconds": out["seconds"],
            **info,
        }
        print(REPLY + json.dumps(reply), flush=True)
        return
    print(REPLY + json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("task") == "quit":
            break
        try:
            reply = run(system, request)
        except Exception as error:
            import traceback

            reply = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        print(REPLY + json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
