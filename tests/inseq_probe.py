"""Inseq with attnlrp's methods ("attnlrp", "cp-lrp"), beside attnlrp's own relevance of the same predictions.

Run by tests/test_inseq_interop.py in .venv-inseq (Inseq 0.7.1 and its pins; made by `make test`), on tiny random
models (float64) over the tokenizer saved in TOKENIZER_DIR: a LLaMA (decoder-only), a T5 and a BART
(encoder-decoder). Prints one JSON object to stdout; the test reads and checks it.

usage: python inseq_probe.py TOKENIZER_DIR
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import inseq
import torch
from inseq.data.aggregation_functions import DEFAULT_ATTRIBUTION_AGGREGATE_DICT
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import attnlrp
import attnlrp.interop.inseq  # registers "attnlrp" and "cp-lrp"
from attnlrp.engine.binding import binding_of

PROMPT = "The Eiffel Tower is located in the city of"
SOURCE = "The Eiffel Tower is located in"
STEPS = 3
METHODS = ("attnlrp", "cp-lrp")


def special_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def tiny_llama(tokenizer):
    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        **special_ids(tokenizer),
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).double().eval()


def tiny_seq2seq(arch: str, tokenizer):
    common = dict(decoder_start_token_id=tokenizer.pad_token_id, **special_ids(tokenizer))
    if arch == "t5":  # no biases: CP-LRP conserves
        config = AutoConfig.for_model("t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, **common)
    else:
        config = AutoConfig.for_model(
            arch,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=64,
            **common,
        )
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(config).double().eval()


def state(model) -> dict:
    """What a binding would leave behind: hooks, a bound module, parameters that stopped requiring grad."""
    return {
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "bound": binding_of(model) is not None,
        "requires_grad": all(p.requires_grad for p in model.parameters()),
    }


def generate(model, method: str, tokenizer, text: str, **options):
    attribution_model = inseq.load_model(model, method, tokenizer=tokenizer)
    return attribution_model.attribute(
        text,
        generation_args={"max_new_tokens": STEPS, "do_sample": False},
        show_progress=False,
        pretty_progress=False,
        **options,
    )


def decoder_only(tokenizer) -> dict:
    """Each generated token's relevance over its prefix, from Inseq and from attnlrp.explain (logit targets)."""
    model = tiny_llama(tokenizer)
    before = state(model)
    report: dict = {}
    for method in METHODS:
        out = generate(
            model, method, tokenizer, PROMPT, attributed_fn="logit", attribution_args={"return_convergence_delta": True}
        )
        seq = out.sequence_attributions[0]
        raw = out.aggregate(normalize=False).sequence_attributions[0].target_attributions
        ids, start = [t.id for t in seq.target], seq.attr_pos_start
        steps = []
        for k in range(STEPS):
            prefix = ids[: start + k]
            exp = attnlrp.explain(model, tokenizer, prefix, target=ids[start + k], method=method)
            steps.append(
                {
                    "inseq": raw[: len(prefix), k].tolist(),
                    "ours": exp.scores.tolist(),
                    "delta": float(seq.step_scores["deltas"][k]),
                    "ours_delta": exp.value - exp.total,
                    "value": exp.value,
                }
            )
        report[method] = {"steps": steps, "class": type(seq).__name__, "state": state(model)}
    report["state_before"] = before
    # Inseq's default target: the probability of the generated token
    out = generate(model, "attnlrp", tokenizer, PROMPT)
    seq = out.sequence_attributions[0]
    ids, start = [t.id for t in seq.target], seq.attr_pos_start
    token = ids[start]
    exp = attnlrp.explain(
        model, tokenizer, ids[:start], target=attnlrp.Custom(lambda logits: torch.softmax(logits[-1], -1)[token])
    )
    report["probability"] = {
        "inseq": out.aggregate(normalize=False).sequence_attributions[0].target_attributions[:start, 0].tolist(),
        "ours": exp.scores.tolist(),
    }
    report["outputs"] = outputs(out)
    report["defaults"] = defaults(model, tokenizer, out)
    return report


def outputs(out) -> dict:
    """Aggregation, display and save/load of an attnlrp output."""
    raw = out.aggregate(normalize=False).sequence_attributions[0]
    default = out.aggregate().sequence_attributions[0]
    merged = raw.aggregate("spans", target_spans=(1, 3), normalize=False)
    html = out.show(display=False, return_html=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.json"
        out.save(path)
        loaded = inseq.FeatureAttributionOutput.load(path)
    back = loaded.sequence_attributions[0]
    return {
        "raw": torch.nan_to_num(raw.target_attributions, nan=0.0).tolist(),
        "default": torch.nan_to_num(default.target_attributions, nan=0.0).tolist(),
        "merged_tokens": [t.token for t in merged.target],
        "merged": torch.nan_to_num(merged.target_attributions, nan=0.0).tolist(),
        "tokens": [t.token for t in raw.target],
        "html_has_tokens": all(t in html for t in ("iffel", "Tower", "located")),
        "loaded_equal": loaded == out,
        "loaded_class": type(back).__name__,
        "loaded_aggregator": back._aggregator,
        "loaded_aggregated_equal": loaded.aggregate() == out.aggregate(),
        "info_method": loaded.info["attribution_method"],
    }


def defaults(model, tokenizer, out) -> dict:
    """Inseq's own defaults after attnlrp's outputs were made and aggregated: still the L2 norm and absmax."""
    ours = out.sequence_attributions[0]
    theirs = generate(model, "input_x_gradient", tokenizer, PROMPT).sequence_attributions[0]
    return {
        "shared": {key: dict(DEFAULT_ATTRIBUTION_AGGREGATE_DICT[key]) for key in ("target_attributions",)},
        "input_x_gradient": [theirs._aggregator, dict(theirs._dict_aggregate_fn["target_attributions"])],
        "ours": [ours._aggregator, dict(ours._dict_aggregate_fn["target_attributions"])],
    }


def encoder_decoder(arch: str, tokenizer) -> dict:
    """Each generated token's relevance over the source and the decoder prefix, from Inseq and from the engine."""
    model = tiny_seq2seq(arch, tokenizer)
    report: dict = {}
    for method in METHODS:
        out = generate(
            model,
            method,
            tokenizer,
            SOURCE,
            attributed_fn="logit",
            attribute_target=True,
            attribution_args={"return_convergence_delta": True},
        )
        seq = out.sequence_attributions[0]
        raw = out.aggregate(normalize=False).sequence_attributions[0]
        source = torch.tensor([[t.id for t in seq.source]])
        target = [t.id for t in seq.target]
        steps = []
        for k in range(1, len(target)):
            with attnlrp.lrp(model, method=method):
                src = model.get_encoder().get_input_embeddings()(source).detach().requires_grad_()
                tgt = model.get_decoder().get_input_embeddings()(torch.tensor([target[:k]])).detach().requires_grad_()
                value = model(inputs_embeds=src, decoder_inputs_embeds=tgt).logits[0, -1, target[k]]
                value.backward()
            ours_source, ours_target = (src * src.grad).sum(-1)[0], (tgt * tgt.grad).sum(-1)[0]
            steps.append(
                {
                    "inseq_source": raw.source_attributions[:, k - 1].tolist(),
                    "inseq_target": raw.target_attributions[:k, k - 1].tolist(),
                    "ours_source": ours_source.tolist(),
                    "ours_target": ours_target.tolist(),
                    "delta": float(seq.step_scores["deltas"][k - 1]),
                    "value": float(value),
                    "ours_delta": float(value - ours_source.sum() - ours_target.sum()),
                }
            )
        report[method] = {"steps": steps, "state": state(model)}
    return report


def main(tokenizer_dir: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    report = {
        "versions": {name: version(name) for name in ("inseq", "captum", "torch", "transformers")},
        "methods": inseq.list_feature_attribution_methods(),
        "llama": decoder_only(tokenizer),
        **{arch: encoder_decoder(arch, tokenizer) for arch in ("t5", "bart")},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
