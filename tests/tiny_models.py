"""Tiny random transformers models (2 layers, hidden 64, vocab 100) for the architecture matrix.

Every model is built from a config, so nothing is downloaded. ``build(name)`` returns a
``Family`` with the model (float64 by default) in eval mode, example inputs, the glob of its layer modules
and the globs of its learned additive inputs (position / token-type embeddings). ``FAMILIES`` run the
whole matrix (tests/test_families.py); ``EXTENDED`` (Bloom, DeepSeek, Llama 4, Gemma 3n, Falcon, ...) run
the audit there and ``attnlrp.check`` with the others (tests/test_check.py).
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
#: Multi-head latent attention (DeepSeek-V2/V3): low-rank q and kv, a rotary part of each head.
_MLA = dict(
    num_key_value_heads=HEADS,
    kv_lora_rank=16,
    q_lora_rank=32,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    head_dim=8,
    v_head_dim=16,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
)
#: The GPT-2 spelling of a config (n_embd, n_layer, n_head, n_positions).
_GPT_STYLE = dict(
    vocab_size=VOCAB,
    n_embd=HIDDEN,
    n_layer=LAYERS,
    n_head=HEADS,
    n_positions=64,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
)
_FALCON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_kv_heads=2,
    ffn_hidden_size=128,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
)
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
    # --- the extended matrix: each passes attnlrp.check (tests/test_check.py) --------------------
    "bloom": (
        "bloom",
        {**_GPT_STYLE, "hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS},
        "transformer.h.*",
        (),
    ),
    "deepseek_v2": (
        "deepseek_v2",
        {**_DECODER, **_MLA, "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1},
        "model.layers.*",
        (),
    ),
    "deepseek_v3": (
        "deepseek_v3",
        {
            **_DECODER,
            **_MLA,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "n_group": 2,
            "topk_group": 1,
            "routed_scaling_factor": 2.5,
        },
        "model.layers.*",
        (),
    ),
    "llama4_text": (
        "llama4_text",
        {
            **_DECODER,
            "head_dim": 16,
            "intermediate_size": 64,
            "intermediate_size_mlp": 128,
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": 1,
            "attention_chunk_size": 4,
            "no_rope_layer_interval": 2,
        },
        "model.layers.*",
        (),
    ),
    "olmoe": ("olmoe", {**_DECODER, **_MOE, "num_experts": 4}, "model.layers.*", ()),
    "gemma3n": (
        "gemma3n_text",
        {
            **_DECODER,
            "head_dim": 16,
            "vocab_size_per_layer_input": VOCAB,
            "hidden_size_per_layer_input": 16,
            "laurel_rank": 8,
            "num_kv_shared_layers": 0,
            "activation_sparsity_pattern": [0.95, 0.0],
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 4,
        },
        "model.layers.*",
        (),
    ),
    "falcon": (
        "falcon",
        {**_FALCON, "new_decoder_architecture": True, "num_ln_in_parallel_attn": 2},
        "transformer.h.*",
        (),
    ),
    "falcon_alibi": ("falcon", {**_FALCON, "alibi": True, "multi_query": True}, "transformer.h.*", ()),
    "phi": ("phi", {**_DECODER, "num_key_value_heads": HEADS}, "model.layers.*", ()),
    "stablelm": ("stablelm", {**_DECODER, "qk_layernorm": True}, "model.layers.*", ()),
    "gptj": ("gptj", {**_GPT_STYLE, "rotary_dim": 8, "n_inner": 128}, "transformer.h.*", ()),
    "opt": (
        "opt",
        {**_DECODER, "ffn_dim": 128, "word_embed_proj_dim": HIDDEN, "pad_token_id": 1},
        "model.decoder.layers.*",
        ("model.decoder.embed_positions",),
    ),
    "mpt": (
        "mpt",
        {
            **_GPT_STYLE,
            "d_model": HIDDEN,
            "n_heads": HEADS,
            "n_layers": LAYERS,
            "expansion_ratio": 2,
            "max_seq_len": 64,
        },
        "transformer.blocks.*",
        (),
    ),
    "codegen": ("codegen", {**_GPT_STYLE, "rotary_dim": 8, "n_inner": 128, "n_ctx": 64}, "transformer.h.*", ()),
    "gpt_bigcode": (
        "gpt_bigcode",
        {**_GPT_STYLE, "n_inner": 128, "multi_query": True},
        "transformer.h.*",
        ("transformer.wpe",),
    ),
    "cohere": ("cohere", _DECODER, "model.layers.*", ()),
    "cohere2": (
        "cohere2",
        {**_DECODER, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
        "model.layers.*",
        (),
    ),
    "granite": (
        "granite",
        {
            **_DECODER,
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.25,
            "logits_scaling": 4.0,
        },
        "model.layers.*",
        (),
    ),
    "modernbert": (
        "modernbert",
        {
            **_ENCODER,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "cls_token_id": 1,
            "sep_token_id": 2,
            "local_attention": 4,
            "layer_types": ["full_attention", "sliding_attention"],
        },
        "model.layers.*",
        (),
    ),
    "deberta_v2": (
        "deberta-v2",
        {
            **_ENCODER,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "position_buckets": 8,
            "pooler_hidden_size": HIDDEN,
        },
        "deberta.encoder.layer.*",
        (),
    ),
    "electra": (
        "electra",
        {**_ENCODER, "embedding_size": 32},
        "electra.encoder.layer.*",
        ("electra.embeddings.position_embeddings", "electra.embeddings.token_type_embeddings"),
    ),
    "xlm_roberta": (
        "xlm-roberta",
        {**_ENCODER, "max_position_embeddings": 64 + 2, "pad_token_id": 1},
        "roberta.encoder.layer.*",
        ("roberta.embeddings.position_embeddings", "roberta.embeddings.token_type_embeddings"),
    ),
}

ENCODERS = ("bert", "roberta", "distilbert", "vit", "modernbert", "deberta_v2", "electra", "xlm_roberta")
DECODERS = [name for name in SPECS if name not in ENCODERS]
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe")
#: The families every test of the matrix runs on, and those added for the conservation check.
FAMILIES = list(SPECS)[: list(SPECS).index("vit") + 1]
EXTENDED = list(SPECS)[len(FAMILIES) :]


#: Parameters that transformers initialises to zero, so that a path through them carries no relevance in
#: a random model (Gemma 3n's AltUp output scale gates its per-layer inputs): randomised in ``build``.
_ZERO_INITIALISED = ("altup.correct_output_scale",)


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
    with torch.no_grad():  # parameters initialised to zero that would hide a path from relevance
        for param_name, param in model.named_parameters():
            if param_name.endswith(_ZERO_INITIALISED):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed + 2)))
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
