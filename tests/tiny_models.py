"""Tiny random transformers models (2 layers, hidden 64, vocab 100) for the architecture matrix.

Every model is built from a config, so nothing is downloaded. ``build(name)`` returns a
``Family`` with the model (float64 by default) in eval mode, example inputs, the glob of its layer modules
and the globs of its learned additive inputs (position / token-type embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

VOCAB, HIDDEN, LAYERS, HEADS, SEQ = 100, 64, 2, 4, 10
IMAGE, PATCH = 16, 4

_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
_ENCODER = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    max_position_embeddings=64,
    num_labels=3,
)

#: name -> (model_type, config overrides, layer glob, learned additive embedding module globs)
SPECS: dict[str, tuple[str, dict, str, tuple[str, ...]]] = {
    "llama": ("llama", _DECODER, "model.layers.*", ()),
    "mistral": ("mistral", {**_DECODER, "sliding_window": 4}, "model.layers.*", ()),
    "mixtral": ("mixtral", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}, "model.layers.*", ()),
    "qwen2": ("qwen2", _DECODER, "model.layers.*", ()),
    "qwen2_moe": (
        "qwen2_moe",
        {**_DECODER, **_MOE, "num_experts": 4, "shared_expert_intermediate_size": 64},
        "model.layers.*",
        (),
    ),
    "qwen3": ("qwen3", {**_DECODER, "head_dim": 16}, "model.layers.*", ()),
    "qwen3_moe": ("qwen3_moe", {**_DECODER, **_MOE, "num_experts": 4, "head_dim": 16}, "model.layers.*", ()),
    "gemma": ("gemma", {**_DECODER, "head_dim": 16}, "model.layers.*", ()),
    "gemma2": (
        "gemma2",
        {**_DECODER, "head_dim": 16, "sliding_window": 4, "query_pre_attn_scalar": 16},
        "model.layers.*",
        (),
    ),
    "gemma3": (
        "gemma3_text",
        {
            **_DECODER,
            "head_dim": 16,
            "sliding_window": 4,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "model.layers.*",
        (),
    ),
    "phi3": ("phi3", {**_DECODER, "pad_token_id": 0}, "model.layers.*", ()),
    "olmo2": ("olmo2", {**_DECODER, "pad_token_id": 0}, "model.layers.*", ()),
    "gpt2": (
        "gpt2",
        dict(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=64,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
        ),
        "transformer.h.*",
        ("transformer.wpe",),
    ),
    "gpt_neox": ("gpt_neox", {**_DECODER, "rotary_pct": 0.5, "num_key_value_heads": HEADS}, "gpt_neox.layers.*", ()),
    "bert": (
        "bert",
        _ENCODER,
        "bert.encoder.layer.*",
        ("bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings"),
    ),
    "roberta": (
        "roberta",
        {**_ENCODER, "max_position_embeddings": 64 + 2, "pad_token_id": 1},
        "roberta.encoder.layer.*",
        ("roberta.embeddings.position_embeddings", "roberta.embeddings.token_type_embeddings"),
    ),
    "distilbert": (
        "distilbert",
        dict(
            vocab_size=VOCAB,
            dim=HIDDEN,
            hidden_dim=128,
            n_layers=LAYERS,
            n_heads=HEADS,
            max_position_embeddings=64,
            num_labels=3,
        ),
        "distilbert.transformer.layer.*",
        ("distilbert.embeddings.position_embeddings",),
    ),
    "vit": (
        "vit",
        dict(
            image_size=IMAGE,
            patch_size=PATCH,
            num_channels=3,
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_labels=5,
        ),
        "vit.layers.*",
        (),
    ),
}

DECODERS = [name for name in SPECS if name not in ("bert", "roberta", "distilbert", "vit")]
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
FAMILIES = list(SPECS)


@dataclass
class Family:
    name: str
    model: nn.Module
    inputs: dict
    layers: str
    additive: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_decoder(self) -> bool:
        return self.name in DECODERS

    @property
    def is_vision(self) -> bool:
        return "pixel_values" in self.inputs


def config(name: str, attn: str = "eager", **overrides):
    model_type, defaults, _, _ = SPECS[name]
    cfg = AutoConfig.for_model(model_type, **{**defaults, **overrides})
    cfg._attn_implementation = attn
    return cfg


def build(
    name: str, attn: str = "eager", seed: int = 0, experts: str = "batched_mm", dtype=torch.float64, **overrides
) -> Family:
    """The tiny model of a family with random weights (the same for a given seed).

    MoE families run their experts with ``experts`` ("eager", "batched_mm" or transformers' default
    "grouped_mm", whose CPU kernel has no float64).
    """
    cfg = config(name, attn, **overrides)
    if name in MOE:
        cfg._experts_implementation = experts
    torch.manual_seed(seed)
    if name == "vit":
        auto = AutoModelForImageClassification
    else:
        auto = AutoModelForCausalLM if name in DECODERS else AutoModelForSequenceClassification
    model = auto.from_config(cfg, attn_implementation=attn)
    model = model.to(dtype).eval()
    _, _, layers, additive = SPECS[name]
    generator = torch.Generator().manual_seed(seed + 1)
    if name == "vit":
        inputs = {"pixel_values": torch.randn(1, 3, IMAGE, IMAGE, generator=generator, dtype=dtype)}
    else:
        inputs = {"input_ids": torch.randint(3, VOCAB, (1, SEQ), generator=generator)}
    return Family(name, model, inputs, layers, additive)


def zero_biases(model: nn.Module) -> None:
    """Set every bias of the model to zero (the learned additive constants that absorb relevance)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # bias, *_bias (LayerNorm, Conv1D, q/k/v, expert biases)
                param.zero_()


def zero_vit_constants(model: nn.Module) -> None:
    """ViT adds its CLS token and position embeddings as bare parameters (no module a Recorder could watch)."""
    with torch.no_grad():
        model.vit.embeddings.cls_token.zero_()
        model.vit.embeddings.position_embeddings.zero_()
