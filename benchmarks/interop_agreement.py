#!/usr/bin/env python
"""How closely AttnLRP and CP-LRP inside Captum and Inseq agree with attnlrp.explain on the bundled SmolLM2-135M.

    python benchmarks/interop_agreement.py       # Captum here (the main .venv), Inseq in .venv-inseq (`make install`)

Each row explains the same predictions both ways (float32 weights): Captum's LayerAttnLRP / LayerCPLRP on the token
ids (the top next token's logit), Captum's LLMGradientAttribution with TextTokenInput and our LLMLRPAttribution
with TextTemplateInput (the log-probability of each answer token), and Inseq's "attnlrp" / "cp-lrp" over a greedy
generation (each generated token's logit). Printed: the largest difference relative to the largest relevance, and
the correlation, over all explained tokens.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, replace_fenced

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
INSEQ_PYTHON = ROOT / ".venv-inseq" / "bin" / "python"
PROMPT = "The Eiffel Tower is located in the city of"
ANSWER = " Paris, France"
STEPS = 4
METHODS = ("attnlrp", "cp-lrp")


def agreement(pairs: list[tuple[list[float], list[float]]]) -> dict:
    ours = np.concatenate([np.asarray(b, dtype=np.float64) for _, b in pairs])
    theirs = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in pairs])
    return {
        "relative": float(np.abs(theirs - ours).max() / np.abs(ours).max()),
        "corr": float(np.corrcoef(theirs, ours)[0, 1]),
        "tokens": len(ours),
    }


def captum_rows(model, tokenizer) -> list[tuple[str, dict]]:
    from captum.attr import LLMGradientAttribution, TextTemplateInput, TextTokenInput

    import attnlrp
    from attnlrp.interop.captum import LayerAttnLRP, LayerCPLRP, LLMLRPAttribution

    layers = {"attnlrp": LayerAttnLRP, "cp-lrp": LayerCPLRP}
    prompt = tokenizer.encode(PROMPT)
    answer = tokenizer.encode(ANSWER, add_special_tokens=False)
    rows = []
    for method in METHODS:
        exp = attnlrp.explain(model, tokenizer, PROMPT, method=method)
        layer = layers[method](lambda x: model(x).logits[:, -1], model.get_input_embeddings(), model=model)
        relevance = layer.attribute(torch.tensor([prompt]), target=exp.target_id).sum(-1)[0]
        rows.append(
            (f"Captum {layers[method].__name__} on token ids, next-token logit", agreement([(relevance, exp.scores)]))
        )

        ours = [
            attnlrp.explain(model, tokenizer, prompt + answer[:k], target=attnlrp.LogProb(token), method=method).scores[
                : len(prompt)
            ]
            for k, token in enumerate(answer)
        ]
        llm = LLMGradientAttribution(layers[method](model, model.get_input_embeddings()), tokenizer)
        result = llm.attribute(TextTokenInput(PROMPT, tokenizer), target=ANSWER)
        rows.append(
            (
                f"Captum LLMGradientAttribution + TextTokenInput, {layers[method].__name__}, log p per answer token",
                agreement(list(zip(result.token_attr, ours))),
            )
        )
        template = TextTemplateInput("{} is located in the {} of", ["The Eiffel Tower", "city"])
        result = LLMLRPAttribution(layers[method](model, model.get_input_embeddings()), tokenizer).attribute(
            template, target=ANSWER
        )
        summed = [[s[:4].sum(), s[8]] for s in ours]  # "The Eiffel Tower": tokens 0-3, "city": token 8
        rows.append(
            (
                f"LLMLRPAttribution + TextTemplateInput, {layers[method].__name__}, log p per answer token",
                agreement(list(zip(result.token_attr, summed))),
            )
        )
    return rows


def inseq_rows(model_dir: str) -> list[tuple[str, dict]]:
    """Run in .venv-inseq: Inseq's attnlrp / cp-lrp over a greedy generation, beside attnlrp.explain."""
    import inseq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import attnlrp
    import attnlrp.interop.inseq  # registers the methods

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for method in METHODS:
        out = inseq.load_model(model, method, tokenizer=tokenizer).attribute(
            PROMPT,
            generation_args={"max_new_tokens": STEPS, "do_sample": False},
            attributed_fn="logit",
            show_progress=False,
            pretty_progress=False,
        )
        seq = out.aggregate(normalize=False).sequence_attributions[0]
        ids, start = [t.id for t in seq.target], seq.attr_pos_start
        pairs = []
        for k in range(STEPS):
            exp = attnlrp.explain(model, tokenizer, ids[: start + k], target=ids[start + k], method=method)
            pairs.append((seq.target_attributions[: start + k, k].tolist(), exp.scores.tolist()))
        rows.append((f"Inseq {method!r}, {STEPS} generated tokens, logit", agreement(pairs)))
    return rows


def main() -> None:
    torch.set_num_threads(2)
    if sys.argv[1:2] == ["--inseq"]:
        print("@@rows " + json.dumps(inseq_rows(sys.argv[2])))
        return
    import attnlrp
    from attnlrp.loading import cache_dir_for, default_model_file

    model, tokenizer = attnlrp.load_model()
    rows = captum_rows(model, tokenizer)
    if INSEQ_PYTHON.exists():
        done = subprocess.run(
            [str(INSEQ_PYTHON), __file__, "--inseq", str(cache_dir_for(default_model_file()))],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        line = next(x for x in done.stdout.splitlines() if x.startswith("@@rows "))
        rows += [tuple(row) for row in json.loads(line[len("@@rows ") :])]
    else:
        print(f"({INSEQ_PYTHON} is missing: `make install` creates it; Inseq rows left out)")
    table = [
        "| flow | max \\|Δ\\| / max \\|R\\| | correlation | relevances compared |",
        "|---|---|---|---|",
        *(f"| {label} | {row['relative']:.1e} | {row['corr']:.8f} | {row['tokens']} |" for label, row in rows),
    ]
    print("\n".join(table))
    if INSEQ_PYTHON.exists():  # every row: the page's table is replaced
        when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        page = replace_fenced(
            ROOT / "docs" / "interop.md",
            "interop-agreement",
            f"Command: `python benchmarks/interop_agreement.py`. Date: {when}. torch {torch.__version__}, "
            f"{cpu_name()}.\n\n" + "\n".join(table),
        )
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
