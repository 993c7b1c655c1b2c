"""torchvision's and timm's ViTs under attnlrp, beside HF's ViT holding the same weights.

Run by tests/test_torchvision_timm.py in .venv-vision (torch 2.14.1, torchvision, timm; made by `make test`):
torchvision 0.29 needs a newer torch than the main environment pins. Prints one JSON object to stdout.

usage: python vision_env_probe.py
"""

from __future__ import annotations

import json
import warnings

import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT
from transformers import ViTConfig, ViTForImageClassification

import attnlrp

IMAGE, PATCH, WIDTH, DEPTH, HEADS, MLP, CLASSES = 16, 4, 32, 2, 4, 64, 5


def torchvision_vit() -> TorchvisionViT:
    torch.manual_seed(0)
    model = (
        TorchvisionViT(
            image_size=IMAGE,
            patch_size=PATCH,
            num_layers=DEPTH,
            num_heads=HEADS,
            hidden_dim=WIDTH,
            mlp_dim=MLP,
            num_classes=CLASSES,
        )
        .double()
        .eval()
    )
    with torch.no_grad():  # the defaults start the class token, the head and the MLP biases at zero
        for name, param in model.named_parameters():
            if name.endswith(("bias", "class_token")) or name.startswith("heads"):
                param.normal_(0, 0.1)
    return model


def timm_vit(attention: str) -> TimmViT:
    model = (
        TimmViT(
            img_size=IMAGE,
            patch_size=PATCH,
            embed_dim=WIDTH,
            depth=DEPTH,
            num_heads=HEADS,
            mlp_ratio=MLP / WIDTH,
            num_classes=CLASSES,
        )
        .double()
        .eval()
    )
    for block in model.blocks:
        block.attn.fused_attn = attention == "sdpa"
    return model


def hf_vit(attention: str) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        num_labels=CLASSES,
        layer_norm_eps=1e-6,
        attn_implementation=attention,
    )
    return ViTForImageClassification(config).double().eval()


def copy_weights(source: TorchvisionViT, timm_model: TimmViT, hf_model: ViTForImageClassification) -> None:
    """torchvision's weights into the timm and the HF model (the three compute the same function)."""
    t, h = timm_model, hf_model
    with torch.no_grad():
        pairs = [
            (source.conv_proj, t.patch_embed.proj, h.vit.embeddings.patch_embeddings.projection),
            (source.encoder.ln, t.norm, h.vit.layernorm),
            (source.heads.head, t.head, h.classifier),
        ]
        for a, b, c in pairs:
            for name in ("weight", "bias"):
                getattr(b, name).copy_(getattr(a, name))
                getattr(c, name).copy_(getattr(a, name))
        for target in (t.cls_token, h.vit.embeddings.cls_token):
            target.copy_(source.class_token)
        for target in (t.pos_embed, h.vit.embeddings.position_embeddings):
            target.copy_(source.encoder.pos_embedding)
        for layer, tb, hb in zip(source.encoder.layers, t.blocks, h.vit.layers):
            mha = layer.self_attention
            tb.attn.qkv.weight.copy_(mha.in_proj_weight)
            tb.attn.qkv.bias.copy_(mha.in_proj_bias)
            for part, w, b in zip(
                ("q_proj", "k_proj", "v_proj"), mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)
            ):
                getattr(hb.attention, part).weight.copy_(w)
                getattr(hb.attention, part).bias.copy_(b)
            for a, b, c in (
                (layer.ln_1, tb.norm1, hb.layernorm_before),
                (layer.ln_2, tb.norm2, hb.layernorm_after),
                (mha.out_proj, tb.attn.proj, hb.attention.o_proj),
                (layer.mlp[0], tb.mlp.fc1, hb.mlp.fc1),
                (layer.mlp[3], tb.mlp.fc2, hb.mlp.fc2),
            ):
                for name in ("weight", "bias"):
                    getattr(b, name).copy_(getattr(a, name))
                    getattr(c, name).copy_(getattr(a, name))


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def explain(model, method: str, hf: bool = False) -> dict:
    """Logits of image 0's class 3 and 1's class 1 (one backward), their pixel relevance, and Σ relevance."""
    x = pixels().requires_grad_()
    with attnlrp.lrp(model, method=method):
        logits = model(pixel_values=x).logits if hf else model(x)
        y = logits[0, 3] + logits[1, 1]
        y.backward()
    relevance, logits = (x * x.grad).detach(), logits.detach()
    return {
        "y": [float(logits[0, 3]), float(logits[1, 1])],
        "total": relevance.flatten(1).sum(1).tolist(),
        "scores": relevance.sum(1).flatten().tolist(),
    }


def zero_constants(model) -> None:
    """Every bias, class token and position embedding zero: then CP-LRP conserves at the pixels."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "class_token", "pos_embedding", "cls_token", "pos_embed", "position_embeddings")):
                param.zero_()


def main() -> None:
    out = {"versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}}
    source = torchvision_vit()
    for attention in ("eager", "sdpa"):
        timm_model, hf_model = timm_vit(attention), hf_vit(attention)
        copy_weights(source, timm_model, hf_model)
        for method in ("attnlrp", "cp-lrp"):
            out[f"torchvision/{method}"] = explain(source, method)
            out[f"timm-{attention}/{method}"] = explain(timm_model, method)
            out[f"hf-{attention}/{method}"] = explain(hf_model, method, hf=True)

    for name, model in (("torchvision", torchvision_vit()), ("timm", timm_vit("sdpa"))):
        zero_constants(model)
        out[f"{name}/bias-free/cp-lrp"] = explain(model, "cp-lrp")
        out[f"{name}/audit"] = {m: str(attnlrp.audit(model, pixels(), method=m)) for m in ("attnlrp", "cp-lrp")}

    big = vit_b_16()  # the real architecture (random weights: nothing is downloaded)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    out["vit_b_16/audit"] = str(attnlrp.audit(big.eval(), image))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unruled op would warn
        exp = attnlrp.explain_image(big, image[0], target=7)
    out["vit_b_16/explain_image"] = {
        "shape": list(exp.scores.shape),
        "target": exp.target,
        "method": exp.method,
        "finite": bool(torch.isfinite(torch.from_numpy(exp.scores)).all()),
    }
    out["vit_b_16/patches"] = {"patch_size": exp.patch_size, "grid": list(exp.patches().shape), "top": exp.top_patch()}
    out["timm/patch_size"] = attnlrp.explain_image(timm_vit("sdpa"), pixels()[0]).patch_size
    print(json.dumps(out))


if __name__ == "__main__":
    main()
