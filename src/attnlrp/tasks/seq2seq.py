"""Encoder-decoders (T5, BART, Marian; Whisper over its audio): the decoder's next token, a teacher-forced
answer or a whole generation, explained over the encoder's input and the decoder's tokens together.

One Batch holds the encoder's input and the decoder's (``target``: its token embeddings). The model runs on its
real ids and masks, with the token embeddings tapped (``engine.inputs.InputTap``). A text encoder's input is
``source``, its token embeddings. Whisper hears log-mel features [mels, frames], split into two kinds that add up
to them: ``silence``, the value of a silent frame (the features' floor: Whisper clips its log-mel values at 8
log10 units below their maximum, and digital silence and the padding after the audio sit there), and ``audio``,
the features minus that floor. So a frame's relevance is what its sound adds to silence, and what the model gets
from hearing silence is the relevance of ``silence`` (log-mel zero is no silence: measured from zero, silent
frames, which sit far from it, would soak up relevance like a bias). The decoder starts from its prompt
(``decoder_prompt``), followed by the answer where the target is an ``Answer``. Text results are one
``Explanation`` with the segments ``source`` and ``target``; Whisper's are ``AudioExplanation``s (the decoder's
tokens, the relevance of every audio frame and of silence).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..engine import lrp
from ..engine.inputs import InputTap
from ..engine.sites import input_sites
from ..errors import InputError
from ..methods import LRPMethod, Method
from ..methods.batch import TOKEN_BUDGET, Batch, chunks, plan
from ..results import AudioExplanation, AudioGenerationExplanation, Explanation, GenerationExplanation
from .base import Task, by_row, check_finite, first_token, model_name, one_per_item
from .causal_lm import Outcome
from .generation import refuse_checkpointing
from .targets import Answer, Target, as_target
from .text import Item, check_length, display_tokens, encode_all
from .token_batch import input_device, pad, pad_id_of

SOURCE, AUDIO, SILENCE, TARGET = "source", "audio", "silence", "target"

#: Seconds between Whisper's log-mel frames (a hop of 160 samples at 16 kHz), where no feature extractor says.
FRAME_SECONDS = 0.01


@dataclass
class Audio:
    """One audio input as the model hears it: log-mel features [mels, frames], and the duration in seconds of the
    audio before its padding, where known (a waveform was given)."""

    features: Tensor
    duration: float | None = None


@dataclass
class Seq2SeqItem:
    """One input of an encoder-decoder: its source (text as an ``Item``, or ``Audio``) and the decoder's ids so far
    (its prompt, then any tokens already generated)."""

    source: Item | Audio
    decoder: list[int]


def decoder_prompt(model: nn.Module, generation: Any = None) -> list[int]:
    """The ids the decoder starts from, as ``generate()`` reads them from ``generation`` (by default the model's
    ``generation_config``): its start token, then the token it forces first (``forced_bos_token_id``: BART-CNN's
    ``<s>``, mBART-50's target language), which ``generate()`` emits whatever the model predicts. Whisper adds its
    language and task instead (a multilingual model's ``language`` and ``task``; English transcription where they
    are not set) and ``<|notimestamps|>``."""
    if generation is None:
        generation = getattr(model, "generation_config", None)
    start = getattr(generation, "decoder_start_token_id", None)
    if start is None:
        start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise InputError(
            f"{type(model).__name__} names no decoder_start_token_id, so its decoder has no first token; set "
            "model.generation_config.decoder_start_token_id."
        )
    prompt = [int(start)]
    languages = getattr(generation, "lang_to_id", None) or {}
    tasks = getattr(generation, "task_to_id", None) or {}
    if getattr(generation, "is_multilingual", False) and languages and tasks:  # else the start token alone
        language, task = _whisper_language(generation), str(getattr(generation, "task", None) or "transcribe").lower()
        if language not in languages or task not in tasks:
            raise InputError(
                f"{type(model).__name__}'s generation_config asks for language {language!r} and task {task!r}; it "
                f"knows the languages {sorted(languages)[:8]}... and the tasks {sorted(tasks)}."
            )
        prompt += [int(languages[language]), int(tasks[task])]
    no_timestamps = getattr(generation, "no_timestamps_token_id", None)
    if no_timestamps is not None:
        prompt.append(int(no_timestamps))
    forced = getattr(generation, "forced_bos_token_id", None)
    if forced is not None and len(prompt) == 1:  # generate() forces it where the decoder has its start token alone
        prompt.append(int(forced))
    return prompt


def _whisper_language(generation: Any) -> str:
    """The language token a Whisper generation config asks for (``"fr"``, ``"french"`` or ``"<|fr|>"``), ``<|en|>``
    where it asks for none."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    language = getattr(generation, "language", None) or "en"
    if isinstance(language, (list, tuple)):  # one per batch item: a batch here is explained one language
        language = language[0]
    language = str(language).lower()
    if language.startswith("<|"):
        return language
    return f"<|{TO_LANGUAGE_CODE.get(language, language)}|>"


def decoder_limit(model: nn.Module) -> int | None:
    """The longest decoder sequence the model takes, if its config says."""
    config = model.config
    for name in ("max_target_positions", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_decoder_length(model: nn.Module, length: int) -> None:
    """An InputError where a decoder sequence of ``length`` tokens is longer than the decoder takes."""
    limit = decoder_limit(model)
    if limit is not None and length > limit:
        raise InputError(
            f"The decoder's sequence is {length} tokens (its prompt, then the answer or the tokens to generate), but "
            f"the decoder of {type(model).__name__} takes at most {limit}. Shorten the answer (or lower "
            "max_new_tokens) to fit."
        )


class Seq2SeqBatch(Batch):
    """Sources (token ids, or audio features) and decoder sequences, right-padded; targets read the decoder's
    logits."""

    token_kinds = frozenset({SOURCE, TARGET})

    def __init__(
        self, model: nn.Module, tokenizer, sites: dict[str, nn.Module], items: list[Seq2SeqItem], targets: list[Target]
    ):
        self.tokenizer, self.sites, self.items, self.targets = tokenizer, sites, items, targets
        self.answers = [t.resolve(tokenizer) if isinstance(t, Answer) else None for t in targets]
        self.decoders = [item.decoder + list(a.answer_ids if a else ()) for item, a in zip(items, self.answers)]
        for seq in self.decoders:
            check_decoder_length(model, len(seq))
        device, pad_id = input_device(model), pad_id_of(tokenizer)
        ids, mask = (t.to(device) for t in pad(self.decoders, pad_id, left=False))
        self.row_inputs = {"decoder_input_ids": ids, "decoder_attention_mask": mask}
        inputs, spans, token_ids = {}, {TARGET: [slice(0, len(s)) for s in self.decoders]}, {TARGET: ids}
        with torch.no_grad():
            inputs[TARGET] = sites[TARGET](ids)
            if isinstance(items[0].source, Audio):
                features = torch.stack([item.source.features for item in items]).to(device, inputs[TARGET].dtype)
                floor = features.flatten(1).min(1).values.view(-1, 1, 1)
                inputs[AUDIO], inputs[SILENCE] = features - floor, floor  # [B, mels, frames], [B, 1, 1]
            else:
                sources = [item.source.ids for item in items]
                source, source_mask = (t.to(device) for t in pad(sources, pad_id, left=False))
                self.row_inputs.update(input_ids=source, attention_mask=source_mask)
                inputs[SOURCE] = sites[SOURCE](source)
                spans[SOURCE], token_ids[SOURCE] = [slice(0, len(s)) for s in sources], source
        super().__init__(model, inputs, spans, token_ids)

    def encoder_inputs(self, row: int) -> dict[str, Tensor]:
        """The model's encoder inputs of one row, as ``generate`` takes them."""
        if AUDIO in self.inputs:
            return {"input_features": (self.inputs[AUDIO] + self.inputs[SILENCE])[row : row + 1]}
        return {name: self.row_inputs[name][row : row + 1] for name in ("input_ids", "attention_mask")}

    def output(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Any:
        """The model's output on stacked input variants of ``rows``."""
        index = torch.as_tensor(list(rows), device=self.device)
        extra = {name: value[index] for name, value in self.row_inputs.items()}
        if AUDIO in inputs:
            extra["input_features"] = inputs[AUDIO] + inputs[SILENCE]
        taps = {kind: self.sites[kind] for kind in (SOURCE, TARGET) if kind in inputs}  # the encoder's call first
        with InputTap(self.model, taps) as tap:
            tap.replace = {kind: inputs[kind] for kind in taps}
            return self.model(**extra, use_cache=False)

    def _logits(self, output: Any, m: int, row: int) -> Tensor:
        return output.logits[m][self.spans[TARGET][row]]

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        self.resolve()
        output = by_row(self.output(inputs, rows))
        return torch.stack([self._outcomes[r].target.scalar(self._logits(output, m, r)) for m, r in enumerate(rows)])

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        output = by_row(self.output(inputs, range(len(self))))
        if self._outcomes is None:
            self._outcomes = []
            for row, target in enumerate(self.targets):
                own = self._logits(output, row, row)
                resolved = self.answers[row] or target.resolve(self.tokenizer, first_token(self.model, own[-1]))
                self._outcomes.append(Outcome(resolved, float(resolved.scalar(own).detach()), own[-1].detach().float()))
        values = torch.stack(
            [self._outcomes[row].target.scalar(self._logits(output, row, row)) for row in range(len(self))]
        )
        check_finite(values.detach(), self)
        return values

    def chunks(self, count: int, grad: bool) -> Iterator[slice]:
        """Slices of stacked variants within the token budget: the encoder's and the decoder's positions count."""
        source = self.inputs[SOURCE].shape[1] if SOURCE in self.inputs else self.inputs[AUDIO].shape[-1] // 2
        return chunks(count, source + self.inputs[TARGET].shape[1], grad)


class Seq2Seq(Task):
    """The next token, a chosen token, a contrast, a log-probability or a whole answer of an encoder-decoder,
    over its source and its decoder's tokens.

    inputs: text or token ids (T5, BART, Marian), or a list of these; Whisper: audio, pass its processor as the
    tokenizer and a waveform (1-D, at the processor's sampling rate, at most 30 s), log-mel features
    [mels, frames], or a list of these. targets: see ``attnlrp.tasks.targets``; they read the decoder's logits
    after its prompt (``decoder_prompt``).
    """

    name = "seq2seq"
    description = "the next token or an answer of an encoder-decoder (T5, BART, Marian; Whisper over its audio)"
    options = ("sampling_rate",)
    fields = ("target", "target_id", "log_prob", "contrast", "answer", "chat", "system")

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            return False
        getter = getattr(model, "get_output_embeddings", None)
        try:
            head = getter() if getter is not None else None
        except (NotImplementedError, AttributeError):
            head = None
        return isinstance(head, nn.Module)  # a language-model head over the decoder

    def __init__(self, model: nn.Module, tokenizer, sampling_rate: int | None = None):
        super().__init__(model)
        self.sites = {site.kind: site.module for site in input_sites(model)}
        if sampling_rate is not None and AUDIO not in self.sites:
            raise InputError(f"sampling_rate= is for audio models; {type(model).__name__} reads text: leave it out.")
        self.sampling_rate = sampling_rate
        if TARGET not in self.sites or not {SOURCE, AUDIO} & set(self.sites):
            raise InputError(
                f"{type(model).__name__} names no input embeddings for its encoder and decoder (get_encoder() and "
                "get_decoder() with get_input_embeddings()), so their relevance can't be read; use "
                "attnlrp.lrp(model) with your own inputs."
            )
        self.features = getattr(tokenizer, "feature_extractor", None)
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.prompt = decoder_prompt(model)
        if self.features is not None:
            self.frame_seconds = self.features.hop_length / self.features.sampling_rate
        else:
            self.frame_seconds = FRAME_SECONDS

    @property
    def hears_audio(self) -> bool:
        return AUDIO in self.sites

    def encode(self, inputs: Any) -> tuple[list[Seq2SeqItem], bool]:
        if self.hears_audio:
            sources, single = self._audio_all(inputs)
        else:
            sources, single = encode_all(self.tokenizer, inputs)
            for item in sources:
                check_length(self.model, self.tokenizer, len(item.ids))
        return [Seq2SeqItem(source, list(self.prompt)) for source in sources], single

    def _audio_all(self, inputs: Any) -> tuple[list[Audio], bool]:
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise InputError("No audio was given: pass a waveform, log-mel features, or a list of these.")
            return [self._audio(x) for x in inputs], False
        x = _tensor(inputs)
        if x is not None and x.dim() == 3:
            return [self._audio(row) for row in x], False
        return [self._audio(inputs)], True

    def _audio(self, given: Any) -> Audio:
        x = _tensor(given)
        config = self.model.config
        mels, frames = config.num_mel_bins, 2 * config.max_source_positions  # the encoder's second conv has stride 2
        if x is None or not x.is_floating_point() or x.dim() not in (1, 2):
            found = f"a {x.dim()}-D {x.dtype} tensor" if x is not None else f"a {type(given).__name__}"
            raise InputError(
                f"{type(self.model).__name__} hears audio: pass a waveform (1-D floats) or log-mel features "
                f"[{mels}, {frames}], not {found}."
            )
        x = x.detach().cpu()
        if x.dim() == 2 and tuple(x.shape) != (mels, frames) and 1 in x.shape:
            x = x.reshape(-1)  # a mono waveform [1, N] or [N, 1]
        if x.dim() == 2:
            channels = [d for d in (0, 1) if x.shape[d] == 2 and x.shape[1 - d] > 2]
            if channels and tuple(x.shape) != (mels, frames):
                raise InputError(
                    f"A stereo waveform {tuple(x.shape)} was given; the model hears one channel: mix it down "
                    f"(x.mean({channels[0]})) and pass it 1-D."
                )
            if tuple(x.shape) != (mels, frames):
                raise InputError(
                    f"Log-mel features of shape {tuple(x.shape)} were given, but the model takes [{mels}, {frames}]; "
                    "make them with the model's processor (its feature extractor pads to that length)."
                )
            heard = getattr(self.features, "sampling_rate", None)
            if self.sampling_rate is not None and heard is not None and self.sampling_rate != heard:
                raise InputError(
                    f"sampling_rate={self.sampling_rate} was given with log-mel features, which the feature extractor "
                    f"makes from {heard} Hz audio: the rate is for waveforms; leave it out, or pass the waveform."
                )
            return Audio(x)
        if self.features is None:
            raise InputError(
                "A waveform was given, but no feature extractor to hear it with: pass the model's processor "
                "(AutoProcessor.from_pretrained(...)) as the tokenizer, or log-mel features."
            )
        rate, limit = self.features.sampling_rate, self.features.n_samples
        if self.sampling_rate is not None and self.sampling_rate != rate:
            raise InputError(
                f"The audio is at {self.sampling_rate} Hz, but {type(self.model).__name__} hears {rate} Hz: resample "
                f"it first (torchaudio.functional.resample(x, {self.sampling_rate}, {rate}), or librosa.resample)."
            )
        if x.numel() == 0:
            raise InputError("The waveform is empty: give some audio to explain.")
        if x.numel() > limit:
            raise InputError(
                f"The audio is {x.numel()} samples ({x.numel() / rate:.4g} s) long, but the model hears at most {limit} "
                f"({limit / rate:g} s) at once (the rest would be cut off): explain it in pieces of at most that length."
            )
        encoded = self.features(x.float().numpy(), sampling_rate=rate, return_tensors="pt")
        return Audio(encoded["input_features"][0], duration=x.numel() / rate)

    def targets(self, target: Any, count: int) -> list[Target]:
        """One target per input; a bad target (several tokens, unknown id) fails now, not after the forward."""
        targets = [as_target(t) for t in one_per_item(target, count, "inputs")]
        for t in targets:
            t.resolve(self.tokenizer, 0)
        return targets

    def lengths(self, items: Sequence[Seq2SeqItem]) -> list[int]:
        return [
            (item.source.features.shape[-1] // 2 if isinstance(item.source, Audio) else len(item.source.ids))
            + len(item.decoder)
            for item in items
        ]

    def prepare(self, items: Sequence[Seq2SeqItem], targets: Sequence[Target]) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.model, self.tokenizer, self.sites, list(items), list(targets))

    def results(self, batch: Seq2SeqBatch, relevance: dict, method: Method) -> list[Explanation]:
        out = []
        for row, (item, decoder, outcome) in enumerate(zip(batch.items, batch.decoders, batch.outcomes)):
            r, last = outcome.target, outcome.last
            decoded = _cpu(relevance[TARGET][row, batch.spans[TARGET][row]])
            before_answer = len(item.decoder) if r.answer_ids else None  # a teacher-forced answer follows
            common = dict(
                target=r.label,
                value=outcome.value,
                method=method.name,
                model=model_name(self.model),
                target_id=r.token_id,
                explained=r.spec,
                logit=float(last[r.token_id]) if r.token_id is not None else None,
                prob=float(torch.softmax(last, -1)[r.token_id]) if r.token_id is not None else None,
            )
            if isinstance(item.source, Audio):
                raw, display, special = display_tokens(self.tokenizer, decoder)
                out.append(
                    AudioExplanation(
                        tokens=raw,
                        display=display,
                        scores=decoded,
                        token_ids=list(decoder),
                        special=special,
                        frames=_cpu(relevance[AUDIO][row]),
                        silence=float(relevance[SILENCE][row].sum()),
                        frame_seconds=self.frame_seconds,
                        duration=item.source.duration,
                        context=before_answer,
                        **common,
                    )
                )
                continue
            ids = item.source.ids + decoder
            raw, display, special = display_tokens(self.tokenizer, ids)
            n = len(item.source.ids)
            out.append(
                Explanation(
                    tokens=raw,
                    display=display,
                    scores=torch.cat([_cpu(relevance[SOURCE][row, batch.spans[SOURCE][row]]), decoded]),
                    token_ids=ids,
                    special=special,
                    segments=[(SOURCE, 0, n), (TARGET, n, len(ids))],
                    context=n + before_answer if before_answer is not None else None,
                    **common,
                )
            )
        return out


def _tensor(x: Any) -> Tensor | None:
    """``x`` as a tensor (arrays and lists of numbers), or None where it is something else."""
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError):
        return None


def _cpu(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().cpu()


def explain_generation(
    model: nn.Module,
    tokenizer,
    inputs: Any,
    method: Method,
    max_new_tokens: int = 32,
    backward_batch: int = 8,
    **generate_kwargs,
) -> GenerationExplanation:
    """Generate (greedy by default) from one source, then explain every generated token over the source and the
    decoder's tokens before it. An LRP method runs one forward over the whole generation (the decoder
    teacher-forced), shared by all tokens, with one vectorised backward per ``backward_batch`` tokens; any other
    method explains each token as the next token of its prefix, ``backward_batch`` prefixes per batch."""
    refuse_checkpointing(method)
    task = Seq2Seq(model, tokenizer)
    if task.hears_audio and generate_kwargs.get("return_timestamps"):  # generate() then returns segments, no ids
        raise InputError(
            "explain_generation explains a transcription without timestamps: leave out return_timestamps (each "
            "generated token's relevance over the audio's frames shows the time it heard it in)."
        )
    task.prompt = decoder_prompt(model, _generating(model, generate_kwargs))
    items, single = task.encode(inputs)
    if not single:
        raise InputError(f"explain_generation continues one input, not {len(items)}: call it once per input.")
    (item,) = items
    check_decoder_length(model, len(item.decoder) + max_new_tokens)
    start = task.prepare([item], task.targets(None, 1))
    generate_kwargs.setdefault("do_sample", False)
    if not task.hears_audio:  # generate() continues the whole prompt, a forced first token included (Whisper's own)
        generate_kwargs.setdefault("decoder_input_ids", start.row_inputs["decoder_input_ids"])
    with torch.no_grad():
        output = model.generate(
            **start.encoder_inputs(0), max_new_tokens=max_new_tokens, return_dict_in_generate=True, **generate_kwargs
        )
    sequence = [int(i) for i in output.sequences[0]]
    item = Seq2SeqItem(item.source, sequence[: len(item.decoder)])  # Whisper may have chosen its language
    generated = sequence[len(item.decoder) :]
    if not generated:
        raise InputError("The model generated no token (it stopped at once); nothing to explain.")
    if isinstance(method, LRPMethod):
        rows, values, probs = _shared_forward(task, item, generated, method, backward_batch)
    else:
        rows, values, probs = _per_step(task, item, generated, method, backward_batch)
    common = dict(values=values, method=method.name, model=model_name(model), probs=probs)
    n_prompt = len(item.decoder)
    if isinstance(item.source, Audio):
        raw, display, special = display_tokens(task.tokenizer, sequence)
        return AudioGenerationExplanation(
            tokens=raw,
            display=display,
            matrix=_causal(rows[TARGET], n_prompt),
            prompt_length=n_prompt,
            token_ids=sequence,
            special=special,
            frames=rows[AUDIO],
            silence=rows[SILENCE][:, 0].tolist(),
            frame_seconds=task.frame_seconds,
            duration=item.source.duration,
            **common,
        )
    ids = item.source.ids + sequence
    raw, display, special = display_tokens(task.tokenizer, ids)
    n = len(item.source.ids)
    return GenerationExplanation(
        tokens=raw,
        display=display,
        matrix=np.concatenate([rows[SOURCE], _causal(rows[TARGET], n_prompt)], axis=1),
        prompt_length=n + n_prompt,
        token_ids=ids,
        special=special,
        segments=[(SOURCE, 0, n), (TARGET, n, len(ids))],
        **common,
    )


def _generating(model: nn.Module, generate_kwargs: dict[str, Any]) -> Any:
    """The generation config whose prompt ``generate(**generate_kwargs)`` starts from: the model's, with the
    ``forced_bos_token_id`` of the call (mBART-50's ``forced_bos_token_id=`` a language code), else of a
    ``generation_config=`` given that sets one, as ``generate()`` merges them."""
    generation = copy.copy(getattr(model, "generation_config", None))
    given = getattr(generate_kwargs.get("generation_config"), "forced_bos_token_id", None)
    forced = generate_kwargs.get("forced_bos_token_id", given)
    if generation is not None and ("forced_bos_token_id" in generate_kwargs or given is not None):
        generation.forced_bos_token_id = forced
    return generation


def _causal(matrix: np.ndarray, n_prompt: int) -> np.ndarray:
    """Decoder relevance [steps, positions] with step i's row kept over the decoder's prompt and the i tokens
    generated before it (what it saw)."""
    keep = np.arange(matrix.shape[1])[None, :] < n_prompt + np.arange(matrix.shape[0])[:, None]
    return np.where(keep, matrix, 0).astype(np.float32)


def _shared_forward(
    task: Seq2Seq, item: Seq2SeqItem, generated: list[int], method: LRPMethod, backward_batch: int
) -> tuple[dict[str, np.ndarray], list[float], list[float]]:
    """Each generated token's relevance per input kind [steps, ...], its value and its probability, from one
    forward of the decoder teacher-forced on the whole generation."""
    batch = task.prepare([item], [Answer(generated)])
    leaves = batch.leaves()
    first = len(item.decoder) - 1  # the decoder position whose logits predict the first generated token
    rows: dict[str, np.ndarray] = {}
    with lrp(task.model, method=method.rules, layer_rules=method.layer_rules), torch.enable_grad():
        logits = batch.output(leaves, [0]).logits[0, first : first + len(generated)]
        picked = torch.tensor(generated, device=logits.device).unsqueeze(1)
        values = logits.gather(1, picked)[:, 0]
        check_finite(values.detach())
        probs = torch.softmax(logits.detach().float(), -1).gather(1, picked)[:, 0].tolist()
        for start in range(0, len(generated), backward_batch):
            steps = torch.arange(start, min(start + backward_batch, len(generated)), device=values.device)
            seeds = torch.zeros(len(steps), len(values), dtype=values.dtype, device=values.device)
            seeds[torch.arange(len(steps)), steps] = 1
            grads = torch.autograd.grad(
                values, list(leaves.values()), grad_outputs=seeds, is_grads_batched=True, retain_graph=True
            )
            for (kind, x), g in zip(leaves.items(), grads):
                block = batch.reduce(kind, (x * g)[:, 0]).detach().float().cpu().numpy()
                rows.setdefault(kind, np.zeros((len(generated), *block.shape[1:]), dtype=np.float32))
                rows[kind][start : start + len(steps)] = block
    return rows, values.detach().float().tolist(), probs


def _per_step(
    task: Seq2Seq, item: Seq2SeqItem, generated: list[int], method: Method, batch_size: int
) -> tuple[dict[str, np.ndarray], list[float], list[float]]:
    """Each generated token explained as the next token of its prefix: relevance per input kind [steps, ...], its
    value and its probability."""
    prefixes = [Seq2SeqItem(item.source, item.decoder + generated[:i]) for i in range(len(generated))]
    steps: list[Explanation] = []
    for group in plan(task.lengths(prefixes), batch_size, TOKEN_BUDGET):
        batch = task.prepare([prefixes[i] for i in group], task.targets([generated[i] for i in group], len(group)))
        method.check(batch)
        steps.extend(task.results(batch, method.attribute(batch), method))
    width = len(item.decoder) + len(generated)
    n = 0 if isinstance(item.source, Audio) else len(item.source.ids)
    rows = {TARGET: np.zeros((len(steps), width), dtype=np.float32)}
    for i, step in enumerate(steps):
        rows[TARGET][i, : len(step.scores) - n] = step.scores[n:]
    if isinstance(item.source, Audio):
        rows[AUDIO] = np.stack([step.frames for step in steps])
        rows[SILENCE] = np.array([[step.silence] for step in steps], dtype=np.float32)
    else:
        rows[SOURCE] = np.stack([step.scores[:n] for step in steps])
    return rows, [step.value for step in steps], [step.prob for step in steps]
