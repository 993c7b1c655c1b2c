"""Encoder-decoders through explain() and explain_generation(): tiny random T5, BART, Marian (with the bundled
tokenizer) and Whisper (with Whisper tiny.en's real tokenizer and a 1-second feature extractor), float64.

(a) CP-LRP with biases and position embeddings zeroed conserves: the relevance of every input kind together (source
or audio and silence, and the decoder's tokens) equals the explained value; (b) eager and SDPA attention agree;
(c) a batch equals each input alone; every method of the registry runs where it means something; results save,
load, show, render to HTML and to figures; bad input gets one clear error.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    BartForSequenceClassification,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

import attnlrp
from attnlrp import Answer, AudioExplanation, AudioGenerationExplanation, GenerationExplanation
from attnlrp.methods import get_method
from attnlrp.results.explanation import mean_relevance
from attnlrp.tasks import Seq2Seq, seq2seq, task_for

TEXT = "The river Elm runs through Ashford."
TEXTS = [TEXT, "A short one", "Ashford was founded in 1712 by the river."]
START, NO_TIMESTAMPS, END = 50257, 50362, 50256  # Whisper's special tokens
_SIZES = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_position_embeddings=64,
)
#: model type -> extra config of its tiny version
TEXT_ARCHS = {
    "t5": dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4),
    "bart": _SIZES,
    "marian": _SIZES,
}
ARCHS = [*TEXT_ARCHS, "whisper"]


def _zero_constants(model: torch.nn.Module) -> None:
    """Biases and the learned or sinusoidal position embeddings: input-independent terms that hold relevance."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "embed_positions" in name:
                param.zero_()
        for name, buffer in model.named_buffers():
            if name.endswith("final_logits_bias"):
                buffer.zero_()


def text_model(arch: str, tokenizer, attn: str | None = None, constants: bool = False):
    """A tiny random encoder-decoder over the bundled tokenizer's vocabulary, float64, eval."""
    start = tokenizer.pad_token_id if arch == "t5" else tokenizer.bos_token_id  # BART's pad embedding is zero
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=start,
        **({"decoder_vocab_size": len(tokenizer)} if arch == "marian" else {}),
        **TEXT_ARCHS.get(arch, _SIZES),  # other BART-like types (mBART) take BART's sizes
    )
    if attn is not None:
        config._attn_implementation = attn
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).double().eval()
    model.generation_config.decoder_start_token_id = start
    if not constants:
        _zero_constants(model)
    return model


@pytest.fixture(scope="module")
def processor():
    """Whisper tiny.en's tokenizer with a feature extractor that hears 1 s (100 log-mel frames)."""
    from attnlrp.zoo import whisper

    return WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=1), tokenizer=whisper.tokenizer()
    )


def whisper_model(processor, attn: str | None = None, constants: bool = False):
    """A tiny random Whisper (50 encoder positions: 100 frames, 1 s) over tiny.en's vocabulary, float64, eval."""
    config = WhisperConfig(
        vocab_size=len(processor.tokenizer),
        num_mel_bins=80,
        max_source_positions=50,
        max_target_positions=16,
        pad_token_id=END,
        bos_token_id=END,
        eos_token_id=END,
        decoder_start_token_id=START,
        begin_suppress_tokens=None,
        **{k: v for k, v in _SIZES.items() if k != "max_position_embeddings"},
    )
    if attn is not None:
        config._attn_implementation = attn
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).double().eval()
    model.generation_config.no_timestamps_token_id = NO_TIMESTAMPS
    model.generation_config.is_multilingual = False
    if not constants:
        _zero_constants(model)
    return model


def waveform(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts at 16 kHz (random, so that every frame differs)."""
    rng = np.random.default_rng(seed)
    return (
        0.1 * rng.standard_normal(int(seconds * 16000)) * np.sin(np.linspace(0, 9, int(seconds * 16000))) ** 2
    ).astype(np.float32)


AUDIO = [waveform(0.75), waveform(0.4, seed=1), waveform(1.0, seed=2)]


def model_and_inputs(arch: str, tokenizer, processor, **options):
    """(model, its tokenizer or processor, its inputs) of an architecture."""
    if arch == "whisper":
        return whisper_model(processor, **options), processor, AUDIO
    return text_model(arch, tokenizer, **options), tokenizer, TEXTS


def _relative(exp) -> float:
    """|Σ R - y| / |y| (|Σ R| where y is 0: BART's padding row, a zero embedding tied to the head, has logit 0)."""
    return abs(exp.total - exp.value) / abs(exp.value) if exp.value else abs(exp.total)


def _scores(exp) -> np.ndarray:
    """Every relevance of an explanation in one vector (tokens, and frames and silence for audio)."""
    if isinstance(exp, AudioExplanation):
        return np.concatenate([exp.scores, exp.frames, [exp.silence]])
    return exp.scores


# --- (a) conservation, targets and what results hold --------------------------------------------------------


@pytest.mark.parametrize("arch", list(TEXT_ARCHS))
def test_text_encoder_decoders_conserve_over_source_and_target(arch, tokenizer):
    model = text_model(arch, tokenizer)
    exp = attnlrp.explain(model, tokenizer, TEXT, method="cp-lrp")
    source = tokenizer(TEXT).input_ids
    start = model.generation_config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([[start]])).logits[0, -1]
    assert exp.value == pytest.approx(float(logits.max())) and exp.target_id == int(logits.argmax())
    assert _relative(exp) < 1e-6, f"{arch}: Σ R = {exp.total}, y = {exp.value}"
    assert exp.segments == [("source", 0, len(source)), ("target", len(source), len(source) + 1)]
    assert exp.token_ids == [*source, start] and sum(exp.segment_scores().values()) == pytest.approx(exp.total)
    assert exp.segment_scores()["source"] != 0 and exp.prob == pytest.approx(float(torch.softmax(logits, -1).max()))
    answer = attnlrp.explain(model, tokenizer, TEXT, target=Answer(" Elm river"), method="cp-lrp")
    answer_ids = tokenizer.encode(" Elm river", add_special_tokens=False)
    assert answer.token_ids == [*source, start, *answer_ids] and answer.target == " Elm river"
    assert _relative(answer) < 1e-6
    # as for a causal LM: the answer's own tokens are apart; rankings cover the source and the decoder's prompt
    assert answer.context == len(source) + 1 and exp.context is None
    assert answer.answer_relevance == pytest.approx(float(answer.scores[len(source) + 1 :].sum()))
    assert answer.answer_relevance != 0 and max(i for _, _, i in answer.top(100)) < answer.context
    attn = attnlrp.explain(model, tokenizer, TEXT, method="attnlrp")
    assert attn.value == exp.value and np.isfinite(attn.scores).all() and not np.allclose(attn.scores, exp.scores)


def test_whisper_conserves_over_audio_silence_and_target(processor, tmp_path):
    model = whisper_model(processor)
    exp = attnlrp.explain(model, processor, AUDIO[0], method="cp-lrp")
    features = processor.feature_extractor(AUDIO[0], sampling_rate=16000, return_tensors="pt").input_features.double()
    with torch.no_grad():
        logits = model(input_features=features, decoder_input_ids=torch.tensor([[START, NO_TIMESTAMPS]])).logits[0, -1]
    assert isinstance(exp, AudioExplanation) and exp.value == pytest.approx(float(logits.max()))
    assert exp.tokens == ["<|startoftranscript|>", "<|notimestamps|>"] and exp.frames.shape == (100,)
    assert exp.duration == pytest.approx(0.75) and exp.frame_seconds == pytest.approx(0.01)
    assert _relative(exp) < 1e-6, f"Σ R = {exp.total}, y = {exp.value}"
    assert exp.audio_total != 0 and exp.silence != 0 and exp.heard.shape == (75,)
    # silent frames (the padding after 0.75 s, past the STFT window) are silence itself: nothing to add to it
    assert not exp.frames[80:].any()
    answer = attnlrp.explain(model, processor, AUDIO[0], target=Answer(" hello there"), method="cp-lrp")
    assert answer.tokens[2:] == processor.tokenizer.tokenize(" hello there") and _relative(answer) < 1e-6
    assert answer.context == 2 and answer.answer_relevance == pytest.approx(float(answer.scores[2:].sum()))
    loaded = attnlrp.Explanation.load(answer.save(tmp_path / "answer.json"))  # the base class reads its subclass
    assert isinstance(loaded, AudioExplanation) and loaded == answer
    from_features = attnlrp.explain(model, processor, features[0].float(), method="cp-lrp")
    np.testing.assert_allclose(from_features.frames, exp.frames, rtol=1e-6, atol=1e-12)
    assert from_features.duration is None


@pytest.mark.parametrize("arch", ["t5", "whisper"])
def test_the_default_target_is_a_token_generation_may_emit(arch, tokenizer, processor):
    # Whisper suppresses tokens when it generates (generation_config.suppress_tokens, begin_suppress_tokens): the
    # top next token explained by default is the first token generate() emits, not a suppressed one
    model, tok, inputs = model_and_inputs(arch, tokenizer, processor)
    top = attnlrp.explain(model, tok, inputs[0], method="cp-lrp").target_id
    model.generation_config.suppress_tokens = [top]
    try:
        exp = attnlrp.explain(model, tok, inputs[0], method="cp-lrp")
        gen = attnlrp.explain_generation(model, tok, inputs[0], max_new_tokens=1, method="cp-lrp")
    finally:
        model.generation_config.suppress_tokens = None
    assert exp.target_id != top and exp.target_id == gen.token_ids[gen.prompt_length]


def test_task_detection():
    config = AutoConfig.for_model("bart", vocab_size=100, **_SIZES)
    assert task_for(AutoModelForSeq2SeqLM.from_config(config)) is Seq2Seq
    assert task_for(BartForSequenceClassification(config)).name == "sequence-classification"


# --- (b) eager = sdpa, (c) batched = alone ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_eager_and_sdpa_agree(arch, tokenizer, processor):
    for method in ("attnlrp", "cp-lrp"):
        eager, tok, inputs = model_and_inputs(arch, tokenizer, processor, attn="eager")
        sdpa, _, _ = model_and_inputs(arch, tokenizer, processor, attn="sdpa")
        a = attnlrp.explain(eager, tok, inputs[2], method=method)
        b = attnlrp.explain(sdpa, tok, inputs[2], method=method)
        np.testing.assert_allclose(_scores(a), _scores(b), rtol=1e-6, atol=1e-9, err_msg=f"{arch} {method}")


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_equals_each_input_alone(arch, tokenizer, processor):
    model, tok, inputs = model_and_inputs(arch, tokenizer, processor, constants=True)
    methods = {"whisper": ("cp-lrp", "gradient"), "t5": ("cp-lrp", "input_x_gradient", "occlusion")}.get(
        arch, ("cp-lrp", "input_x_gradient")
    )
    for method in methods:
        together = attnlrp.explain(model, tok, inputs, target=[None, Answer(" two words"), None], method=method)
        for i, exp in enumerate(together):
            alone = attnlrp.explain(
                model, tok, inputs[i], target=Answer(" two words") if i == 1 else None, method=method
            )
            np.testing.assert_allclose(_scores(exp), _scores(alone), rtol=1e-6, atol=1e-9, err_msg=f"{arch} {method}")
            assert exp.target == alone.target and exp.value == pytest.approx(alone.value)


@pytest.mark.parametrize("arch", ["t5", "whisper"])
def test_every_method_runs_where_it_means_something(arch, tokenizer, processor):
    model, tok, inputs = model_and_inputs(arch, tokenizer, processor)
    for name in attnlrp.available_methods():
        method = get_method(name, **({"steps": 4} if name == "integrated_gradients" else {}))
        if name.startswith("attention") or (arch == "whisper" and name == "occlusion"):
            with pytest.raises(attnlrp.MethodError, match="token"):
                attnlrp.explain(model, tok, inputs[:2], method=method)
            continue
        first, second = attnlrp.explain(model, tok, inputs[:2], method=method)
        assert first.method == name and np.isfinite(_scores(first)).all() and len(_scores(second)) > 2
        assert len(first.scores) == len(first.tokens)


# --- generation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["t5", "bart", "whisper"])
@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_generation_shares_one_forward_and_equals_each_step(arch, method, tokenizer, processor):
    model, tok, inputs = model_and_inputs(arch, tokenizer, processor)
    # two backward batches of different sizes (3, then 2)
    gen = attnlrp.explain_generation(model, tok, inputs[0], max_new_tokens=5, method=method, backward_batch=3)
    assert len(gen) == 5 and gen.method == method
    task = Seq2Seq(model, tok)
    (item,), _ = task.encode(inputs[0])
    generated = gen.token_ids[gen.prompt_length :]
    rows, values, probs = seq2seq._per_step(task, item, generated, get_method(method), batch_size=2)
    np.testing.assert_allclose(gen.values, values, rtol=1e-6)
    np.testing.assert_allclose(gen.probs, probs, rtol=1e-5)
    for i in range(len(gen)):
        step = gen.step(i)
        if method == "cp-lrp":
            assert _relative(step) < 1e-5, f"step {i}: Σ R = {step.total}, y = {step.value}"
        n = 0  # the source's tokens before the decoder's in each row
        if arch == "whisper":
            assert isinstance(step, AudioExplanation) and len(step.tokens) == 2 + i
            np.testing.assert_allclose(step.frames, rows["audio"][i], rtol=1e-5, atol=1e-9)
            assert step.silence == pytest.approx(float(rows["silence"][i, 0]), rel=1e-5)
        else:
            n = gen.segments[0][2]
            assert step.segments == [("source", 0, n), ("target", n, gen.prompt_length + i)]
            np.testing.assert_allclose(step.scores[:n], rows["source"][i], rtol=1e-5, atol=1e-9)
        decoded = step.scores[n:]
        np.testing.assert_allclose(decoded, rows["target"][i, : len(decoded)], rtol=1e-5, atol=1e-9)
        assert not gen.matrix[i, gen.prompt_length + i :].any(), "nothing at or after the explained token"


def test_per_step_passes_stay_within_the_token_budget(tokenizer, processor, monkeypatch):
    model, tok, inputs = model_and_inputs("t5", tokenizer, processor)
    gen = attnlrp.explain_generation(model, tok, inputs[0], max_new_tokens=4, method="cp-lrp")
    task = Seq2Seq(model, tok)
    (item,), _ = task.encode(inputs[0])
    generated = gen.token_ids[gen.prompt_length :]
    free = seq2seq._per_step(task, item, generated, get_method("cp-lrp"), batch_size=8)
    budget = 2 * (task.lengths([item])[0] + len(generated))  # two of the longest prefixes
    monkeypatch.setattr(seq2seq, "TOKEN_BUDGET", budget)
    passes, prepare = [], task.prepare
    monkeypatch.setattr(
        task, "prepare", lambda items, targets: passes.append(task.lengths(items)) or prepare(items, targets)
    )
    capped = seq2seq._per_step(task, item, generated, get_method("cp-lrp"), batch_size=8)
    assert len(passes) == 2 and all(len(p) * max(p) <= budget for p in passes), passes
    for kind in free[0]:
        np.testing.assert_allclose(capped[0][kind], free[0][kind], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(capped[1], free[1], rtol=1e-6)


def test_generation_with_a_baseline_explains_each_step(tokenizer, processor):
    model = text_model("t5", tokenizer)
    lrp = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3)
    gen = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3, method="input_x_gradient")
    assert gen.token_ids == lrp.token_ids and isinstance(gen, GenerationExplanation)
    assert [name for name, _, _ in gen.segments] == ["source", "target"] and np.isfinite(gen.matrix).all()
    speech = attnlrp.explain_generation(
        whisper_model(processor), processor, AUDIO[1], max_new_tokens=2, method="random"
    )
    assert isinstance(speech, AudioGenerationExplanation) and speech.frames.shape == (2, 100)


# --- the binding's inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_the_binding_reads_every_input_and_embeddings_names_them(arch, tokenizer, processor):
    model, _, _ = model_and_inputs(arch, tokenizer, processor)
    if arch == "whisper":
        features = processor.feature_extractor(AUDIO[0], sampling_rate=16000, return_tensors="pt").input_features
        encoder = {"input_features": features.double()}
        decoder = torch.tensor([[START, NO_TIMESTAMPS]])
    else:
        encoder = {"input_ids": torch.tensor([tokenizer(TEXT).input_ids])}
        decoder = torch.tensor([[model.generation_config.decoder_start_token_id, 5]])
    with attnlrp.lrp(model, method="cp-lrp") as binding:
        y = model(**encoder, decoder_input_ids=decoder).logits[0, -1].max()
        y.backward()
        seen = binding.inputs
        assert set(seen) == {"audio" if arch == "whisper" else "source", "target"}
        total = sum(float((x * x.grad).sum().detach()) for x in seen.values())
        assert total == pytest.approx(float(y), rel=1e-6)
        with pytest.raises(attnlrp.BindingError, match=r"binding\.inputs"):
            binding.embeddings  # noqa: B018  (the property raises)
        decoder_only = model(encoder_outputs=model.get_encoder()(**encoder), decoder_input_ids=decoder)
        assert decoder_only.logits.shape[1] == 2 and set(binding.inputs) == {"target"}


@pytest.mark.parametrize("arch", ARCHS)
def test_audit_and_check_build_their_own_example_of_every_encoder_decoder(arch, tokenizer, processor, tmp_path):
    # T5 and Marian had no decoder ids ("You must specify exactly one of input_ids"), Whisper no features
    model, tok, _ = model_and_inputs(arch, tokenizer, processor)
    assert attnlrp.audit(model, method="cp-lrp").ok
    assert attnlrp.check(model).ok
    folder = tmp_path / arch  # the command line fed Whisper's processor the text ("could not convert string")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    from attnlrp import cli

    assert cli.main(["audit", "--model", str(folder), "--check"]) == 0
    assert cli.main(["audit", "--model", str(folder), "--check", "--method", "attnlrp"]) == 2
    if arch == "whisper":  # text was refused as "a waveform or log-mel features", which no option gives
        assert cli.main(["explain", "The Eiffel Tower", "--model", str(folder)]) == 2
        assert cli.main(["generate", "The Eiffel Tower", "--model", str(folder)]) == 2


def test_a_multilingual_whisper_is_explained_in_the_language_and_task_it_generates_in(processor):
    # explain always began <|en|><|transcribe|>, whatever generate() was told
    model = whisper_model(processor)
    ids = {token: processor.tokenizer.convert_tokens_to_ids(token) for token in ("<|en|>", "<|fr|>")}
    tasks = {task: processor.tokenizer.convert_tokens_to_ids(f"<|{task}|>") for task in ("transcribe", "translate")}
    config = model.generation_config
    config.is_multilingual, config.lang_to_id, config.task_to_id = True, ids, tasks
    config.language, config.task = "french", "translate"
    exp = attnlrp.explain(model, processor, AUDIO[0], method="cp-lrp")
    gen = attnlrp.explain_generation(model, processor, AUDIO[0], max_new_tokens=2, method="cp-lrp")
    assert exp.tokens[:3] == gen.tokens[:3] == ["<|startoftranscript|>", "<|fr|>", "<|translate|>"]
    config.language = "klingon"
    with pytest.raises(attnlrp.InputError, match=r"asks for language '<\|klingon\|>' and task 'translate'"):
        attnlrp.explain(model, processor, AUDIO[0])


def test_a_transcription_with_timestamps_is_refused_in_one_line(processor):
    # generate() returned its segments (a dict) and explain_generation failed with an AttributeError
    with pytest.raises(attnlrp.InputError, match=r"^explain_generation explains a transcription without timestamps"):
        attnlrp.explain_generation(
            whisper_model(processor), processor, AUDIO[0], max_new_tokens=2, return_timestamps=True
        )


@pytest.mark.parametrize("arch", ["bart", "mbart"])
def test_a_token_generate_forces_first_belongs_to_the_prompt(arch, tokenizer):
    # bart-large-cnn forces <s> and mBART-50 its target language (forced_bos_token_id): explain took the token the
    # model would predict in its place as the next token, and explain_generation the forced one as its first step
    model, forced = text_model(arch, tokenizer), 1234
    start = model.generation_config.decoder_start_token_id
    model.generation_config.forced_bos_token_id = forced
    source = tokenizer(TEXT, return_tensors="pt")
    generated = model.generate(**source, max_new_tokens=4, do_sample=False, forced_eos_token_id=None)[0].tolist()
    assert generated[:2] == [start, forced]
    exp = attnlrp.explain(model, tokenizer, TEXT, method="cp-lrp")
    assert exp.token_ids[exp.segments[1][1] :] == [start, forced] and exp.target_id == generated[2]
    gen = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3, method="cp-lrp")
    assert gen.token_ids[gen.segments[0][2] : gen.prompt_length] == [start, forced]
    assert gen.token_ids[gen.prompt_length :] == generated[2:] and len(gen) == 3
    assert gen.step(0).target_id == exp.target_id and gen.step(0).value == pytest.approx(exp.value)
    # mBART-50's way: the language given to generate() rather than set in the model's generation config
    model.generation_config.forced_bos_token_id = None
    told = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3, forced_bos_token_id=forced)
    assert told.token_ids[told.segments[0][2] :] == gen.token_ids[gen.segments[0][2] :]


def test_a_generation_cut_by_max_new_tokens_ends_in_a_token_the_model_chose(tokenizer):
    # BART's generation config forces its end token (forced_eos_token_id) in place of the last token max_new_tokens
    # allows: explain_generation explained that token as the model's last step, at a probability near 0
    model, end = text_model("bart", tokenizer), tokenizer.eos_token_id
    assert model.generation_config.forced_eos_token_id == end
    source = tokenizer(TEXT, return_tensors="pt")
    free = model.generate(**source, max_new_tokens=3, do_sample=False, forced_eos_token_id=None)[0].tolist()
    assert model.generate(**source, max_new_tokens=3, do_sample=False)[0].tolist() == [*free[:-1], end] != free
    gen = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3, method="cp-lrp")
    assert gen.token_ids[gen.segments[0][2] :] == free
    with torch.no_grad():  # the last step is the model's top token, at its probability
        top = model(**source, decoder_input_ids=torch.tensor([free[:-1]])).logits[0, -1].softmax(-1).max()
    assert gen.probs[-1] == pytest.approx(float(top), rel=1e-6)
    forced = attnlrp.explain_generation(model, tokenizer, TEXT, max_new_tokens=3, forced_eos_token_id=end)
    assert forced.token_ids[-1] == end, "asked for, the forced end is explained"


def test_a_decoder_only_model_keeps_one_input(tiny_lm, tokenizer):
    with attnlrp.lrp(tiny_lm) as binding:
        tiny_lm(input_ids=torch.tensor([tokenizer(TEXT).input_ids])).logits[0, -1].max().backward()
        assert set(binding.inputs) == {"tokens"} and binding.embeddings is binding.inputs["tokens"]


def test_gemma3n_per_layer_embedding_counts_with_its_tokens():
    from _tiny import ids, tiny

    model = tiny("gemma3n")  # a second, per-layer lookup of the same tokens, credited to their input embeddings
    with attnlrp.lrp(model, method="cp-lrp") as binding:
        y = model(input_ids=ids(8)).logits[0, -1].max()
        y.backward()
        assert set(binding.inputs) == {"tokens"} and binding.embeddings is binding.inputs["tokens"]
        relevance = float((binding.embeddings * binding.embeddings.grad).sum().detach())
    assert relevance == pytest.approx(float(y.detach()), rel=1e-6)


# --- results: save, load, show, HTML, figures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tokenizer, processor):
    """One result of each kind seq2seq gives: text, audio, text generation, audio generation."""
    t5, whisper = text_model("t5", tokenizer), whisper_model(processor)
    return [
        attnlrp.explain(t5, tokenizer, TEXT, method="cp-lrp"),
        attnlrp.explain(whisper, processor, AUDIO[0], method="cp-lrp"),
        attnlrp.explain_generation(t5, tokenizer, TEXT, max_new_tokens=3, method="cp-lrp"),
        attnlrp.explain_generation(whisper, processor, AUDIO[0], max_new_tokens=3, method="cp-lrp"),
    ]


def test_results_save_and_load_exactly(results, tmp_path):
    for i, result in enumerate(results):
        loaded = type(result).load(result.save(tmp_path / f"{i}.json.gz"))
        assert loaded == result and type(loaded) is type(result)
        assert loaded.words() == result.words() and loaded.normalized() == result.normalized()
    audio = results[1]
    assert AudioExplanation.load(audio.save(tmp_path / "a.json")).silence == audio.silence
    with pytest.raises(attnlrp.ResultFileError, match="audio"):
        AudioExplanation.load(results[0].save(tmp_path / "text.json"))


def test_whispers_prompt_tokens_are_special_and_no_words(results, processor, tokenizer, tiny_lm):
    # <|startoftranscript|> and <|notimestamps|> are added tokens the tokenizer marks special, but not among its
    # all_special_tokens: they were flagged special=False, words() glued them into one word and mean_relevance
    # counted it
    audio, speech = results[1], results[3]
    assert audio.tokens == ["<|startoftranscript|>", "<|notimestamps|>"] and audio.special == [True, True]
    assert speech.special[:2] == [True, True]
    answered = attnlrp.explain(whisper_model(processor), processor, AUDIO[0], target=Answer(" Hello there"))
    words = answered.words()
    assert words.display == ["<|startoftranscript|>", "<|notimestamps|>", " Hello", " there"]
    assert words.special == [True, True, False, False]
    assert set(mean_relevance([answered], scope="all").index) == {"hello", "there"}
    chat = attnlrp.explain(tiny_lm, tokenizer, [{"role": "user", "content": "Hi there"}])
    assert chat.special == [t in tokenizer.all_special_tokens for t in chat.tokens] and sum(chat.special) >= 4, (
        "a chat template's special tokens are as before"
    )


def test_audio_results_normalise_tokens_frames_and_silence_together(results):
    audio, speech = results[1], results[3]
    normal = audio.normalized()
    top = max(np.abs(audio.scores).max(), np.abs(audio.frames).max(), abs(audio.silence))
    assert normal.total == pytest.approx(audio.total / top, rel=1e-5)
    assert max(np.abs(normal.scores).max(), np.abs(normal.frames).max(), abs(normal.silence)) == pytest.approx(1)
    rows = speech.normalized()
    for i in range(len(speech)):
        assert rows.step(i).total == pytest.approx(speech.step(i).normalized().total, rel=1e-5)


def test_audio_results_point_at_time(results):
    audio = results[1]
    start, score, frame = audio.top_frames(1)[0]
    assert score == audio.heard.max() and start == pytest.approx(frame * 0.01) and frame < 75
    assert audio.between(0, 0.75) == pytest.approx(float(audio.heard.sum()), rel=1e-6)
    assert audio.between(0, 1.0) == pytest.approx(audio.audio_total, rel=1e-6)


def test_results_show_in_the_terminal(results):
    for result in results:
        plain, colour = io.StringIO(), io.StringIO()
        result.show(color=False, file=plain)
        result.show(color=True, file=colour)
        assert "\x1b[" not in plain.getvalue() and "\x1b[" in colour.getvalue()
    out = io.StringIO()
    results[1].show(color=False, file=out)
    assert "<|notimestamps|>" in out.getvalue() and "audio: Σ relevance" in out.getvalue()
    assert "most relevant time:" in out.getvalue()


def test_results_render_self_contained_html(results, tmp_path):
    for i, result in enumerate(results):
        page = result.save_html(tmp_path / f"{i}.html").read_text(encoding="utf-8")
        assert "attnlrp-view" in page and "http://" not in page and "https://" not in page and " id=" not in page
    for audio in results[1::2]:
        assert "data:image/png;base64," in audio.html_view() and "notimestamps|>" in audio.html_view()


def test_results_draw_figures(results, tmp_path):
    for i, result in enumerate(results):
        for suffix in ("png", "svg"):
            path = result.save_figure(tmp_path / f"{i}.{suffix}")
            assert path.stat().st_size > 1000


# --- bad input ---------------------------------------------------------------------------------------------


def test_a_target_longer_than_the_decoder_allows(tokenizer, processor):
    speech = whisper_model(processor)
    with pytest.raises(attnlrp.InputError, match=r"decoder's sequence is 17 tokens.*at most 16.*Shorten"):
        attnlrp.explain(speech, processor, AUDIO[0], target=Answer(list(range(100, 115))))
    with pytest.raises(attnlrp.InputError, match=r"at most 16.*max_new_tokens"):
        attnlrp.explain_generation(speech, processor, AUDIO[0], max_new_tokens=20)
    bart = text_model("bart", tokenizer)
    with pytest.raises(attnlrp.InputError, match="at most 64"):
        attnlrp.explain(bart, tokenizer, TEXT, target=Answer(" word" * 70))


def test_bad_audio_gets_one_clear_error(tokenizer, processor):
    model = whisper_model(processor)
    with pytest.raises(attnlrp.InputError, match=r"24000 samples \(1\.5 s\) long.*at most 16000 \(1 s\)"):
        attnlrp.explain(model, processor, waveform(1.5))
    with pytest.raises(attnlrp.InputError, match=r"16001 samples \(1 s\) long"):  # it said 1.0 s, at most 1 s
        attnlrp.explain(model, processor, np.zeros(16001, dtype=np.float32))
    with pytest.raises(attnlrp.InputError, match=r"shape \(80, 90\).*\[80, 100\]"):
        attnlrp.explain(model, processor, torch.zeros(80, 90))
    with pytest.raises(attnlrp.InputError, match="processor"):
        attnlrp.explain(model, processor.tokenizer, AUDIO[0])
    with pytest.raises(attnlrp.InputError, match="waveform"):
        attnlrp.explain(model, processor, "some text")
    with pytest.raises(attnlrp.InputError, match="one input, not 2"):
        attnlrp.explain_generation(model, processor, AUDIO[:2], max_new_tokens=2)
    with pytest.raises(attnlrp.InputError, match="padding_side"):
        attnlrp.explain(text_model("t5", tokenizer), tokenizer, TEXT, padding_side="left")


def test_audio_at_another_rate_or_in_stereo_is_refused_with_the_fix(tokenizer, processor):
    whisper = whisper_model(processor)
    with pytest.raises(attnlrp.InputError, match=r"at 44100 Hz, but WhisperForConditionalGeneration hears 16000 Hz"):
        attnlrp.explain(whisper, processor, AUDIO[0], sampling_rate=44100)
    features = processor.feature_extractor(AUDIO[0], sampling_rate=16000, return_tensors="pt").input_features[0]
    with pytest.raises(attnlrp.InputError, match=r"sampling_rate=8000 was given with log-mel features"):
        attnlrp.explain(whisper, processor, features, sampling_rate=8000)  # it was taken without a word
    same = attnlrp.explain(whisper, processor, AUDIO[0], sampling_rate=16000, method="cp-lrp")
    assert same == attnlrp.explain(whisper, processor, AUDIO[0], method="cp-lrp")
    for stereo, axis in ((np.stack([AUDIO[0], AUDIO[0]]), 0), (np.stack([AUDIO[0], AUDIO[0]], axis=1), 1)):
        # channels last (soundfile's layout) was read as log-mel features of the wrong shape
        with pytest.raises(attnlrp.InputError, match=rf"A stereo waveform .* mix it down \(x\.mean\({axis}\)\)"):
            attnlrp.explain(whisper, processor, stereo)
    mono = torch.from_numpy(AUDIO[0]).requires_grad_()  # a raw "Can't call numpy() on Tensor that requires grad"
    for given in (mono, mono[None], mono[:, None]):  # [1, N] was refused as a waveform of 1 channel
        assert attnlrp.explain(whisper, processor, given, method="cp-lrp") == same
    with pytest.raises(attnlrp.InputError, match="sampling_rate= is for audio models; T5ForConditionalGeneration"):
        attnlrp.explain(text_model("t5", tokenizer), tokenizer, TEXT, sampling_rate=16000)
