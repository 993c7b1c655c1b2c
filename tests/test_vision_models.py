"""ViT, DeiT and CLIP's vision tower through the same engine, tiny random configs in float64.

CP-LRP conserves the explained scalar at the pixels and at every layer boundary once the biases,
CLS / distillation tokens and bare position-embedding parameters are zero; CLIP's position
embedding is a module, so its share is read with the Recorder and accounted for.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

import attnlrp
from attnlrp import cli

SIZE = dict(
    image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)

#: name -> (builder, layer glob, module globs of learned additive inputs)
MODELS = {
    "vit": (lambda: ViTForImageClassification(ViTConfig(**SIZE, num_labels=5)), "vit.layers.*", ()),
    "deit": (lambda: DeiTForImageClassification(DeiTConfig(**SIZE, num_labels=5)), "deit.layers.*", ()),
    "deit-teacher": (
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**SIZE, num_labels=5)),
        "deit.layers.*",
        (),
    ),
    "clip": (lambda: CLIPVisionModel(CLIPVisionConfig(**SIZE)), "encoder.layers.*", ("embeddings.position_embedding",)),
    "clip-projection": (
        lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**SIZE, projection_dim=8)),
        "vision_model.encoder.layers.*",
        ("vision_model.embeddings.position_embedding",),
    ),
}

#: bare parameters added to the tokens (no module a Recorder could watch)
_CONSTANTS = ("bias", "cls_token", "distillation_token", "position_embeddings", "class_embedding")


def build(name, attn="eager", constants=False):
    """The model in float64; with ``constants=False`` every bias and bare additive parameter is zero."""
    torch.manual_seed(0)
    model = MODELS[name][0]().double().eval()
    model.config._attn_implementation = attn
    if not constants:
        with torch.no_grad():
            for path, param in model.named_parameters():
                if path.endswith(_CONSTANTS):
                    param.zero_()
    return model


def pixels(batch=1, seed=1):
    return torch.randn(batch, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def direction(model, seed=2):
    """A fixed vector to explain output · vector with (a CLIP text embedding, say)."""
    width = model.config.projection_dim if hasattr(model, "visual_projection") else model.config.hidden_size
    return torch.randn(width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def target_of(name, model):
    return direction(model) if name.startswith("clip") else None


def run(name, model, method, record=(), layer_rules=None):
    """(y, pixel relevance [B, C, H, W], Recorder of the layers and ``record``), through lrp() directly."""
    x = pixels().requires_grad_()
    watched = [MODELS[name][1], *record]
    with attnlrp.lrp(model, method=method, layer_rules=layer_rules), attnlrp.Recorder(model, watched) as rec:
        out = model(pixel_values=x)
        if name.startswith("clip"):
            vector = out.image_embeds if name == "clip-projection" else out.pooler_output
            y = vector[0] @ direction(model)
        else:
            y = out.logits[0].max()
        y.backward()
    return y.detach(), (x * x.grad).detach(), rec


@pytest.mark.parametrize("name", MODELS)
def test_cp_lrp_conserves_at_pixels_and_every_layer(name):
    model = build(name)
    additive = MODELS[name][2]
    y, relevance, rec = run(name, model, "cp-lrp", record=additive)
    held = sum(float(rec.relevance[path].sum()) for path in additive)
    assert float(relevance.sum()) + held == pytest.approx(float(y), rel=1e-4)
    totals = [float(r.sum()) for path, r in rec.relevance.items() if path not in additive]
    assert len(totals) == 2 and totals == pytest.approx([float(y)] * 2, rel=1e-4)
    if additive:
        assert abs(held) > 0.01 * abs(float(y))  # the accounting matters


@pytest.mark.parametrize("name", MODELS)
def test_eager_and_sdpa_agree_and_audit_is_clean(name):
    eager, sdpa = build(name, constants=True), build(name, "sdpa", constants=True)
    y_e, r_e, _ = run(name, eager, "attnlrp")  # the uniform rule at q·kᵀ and A·V, moved into the kernel
    y_s, r_s, _ = run(name, sdpa, "attnlrp")
    # HF's eager attention takes its softmax in float32
    assert float(y_s) == pytest.approx(float(y_e), rel=1e-6)
    assert float((r_s - r_e).norm() / r_e.norm()) < 1e-6
    for method in ("cp-lrp", "attnlrp"):
        assert attnlrp.audit(sdpa, {"pixel_values": pixels()}, method=method).unruled == []


@pytest.mark.parametrize("name", ["vit", "clip-projection"])
def test_explain_image_defaults_to_cp_lrp(name):
    model = build(name, constants=True)
    exp = attnlrp.explain_image(model, pixels()[0], target=target_of(name, model))
    y, relevance, _ = run(name, model, "cp-lrp")
    assert exp.method == "cp-lrp" and exp.value == pytest.approx(float(y), rel=1e-12)
    assert exp.scores.shape == (16, 16) and exp.image.shape == (16, 16, 3) and exp.patch_size == 4
    torch.testing.assert_close(torch.from_numpy(exp.scores), relevance[0].sum(0).float())


def test_batch_with_per_image_targets_in_one_backward_equals_one_by_one():
    model = build("vit", constants=True)
    batch, targets = pixels(3), [0, 4, None]
    together = attnlrp.explain_image(model, batch, target=targets, method="attnlrp")
    alone = [attnlrp.explain_image(model, image, target=t, method="attnlrp") for image, t in zip(batch, targets)]
    assert [e.target_index for e in together][:2] == [0, 4]
    for a, b in zip(together, alone):
        assert a.target_index == b.target_index and a.value == pytest.approx(b.value, rel=1e-12)
        assert abs(a.scores - b.scores).max() <= 1e-6 * abs(b.scores).max()


def test_gamma_rules_on_vit_conserve_without_biases():
    model = build("vit")
    # the stabiliser ε takes a share of about ε / |z_γ| per unit: 3e-4 of y here at the default 1e-6
    rules = {nn.Conv2d: attnlrp.Gamma(0.25, stabilizer=1e-9), nn.Linear: attnlrp.Gamma(0.05, stabilizer=1e-9)}
    y, relevance, _ = run("vit", model, "cp-lrp", layer_rules=rules)
    assert float(relevance.sum()) == pytest.approx(float(y), rel=1e-5)
    _, plain, _ = run("vit", model, "cp-lrp")
    assert float((relevance - plain).norm() / plain.norm()) > 0.01  # γ does change the map


def test_image_targets_by_label_and_errors():
    model = build("vit", constants=True)
    model.config.id2label = {i: f"class {i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    exp = attnlrp.explain_image(model, pixels()[0], target="class 3")
    assert (exp.target, exp.target_index) == ("class 3", 3)
    with pytest.raises(attnlrp.InputError, match="Unknown label"):
        attnlrp.explain_image(model, pixels()[0], target="dog")
    with pytest.raises(attnlrp.InputError, match="outside"):
        attnlrp.explain_image(model, pixels()[0], target=7)
    with pytest.raises(attnlrp.InputError, match="processor="):
        attnlrp.explain_image(model, [pixels()[0].numpy()])
    with pytest.raises(ValueError, match="targets were given for 2 images"):
        attnlrp.explain_image(model, pixels(2), target=[0, 1, 2])


def test_pil_images_through_the_processor_are_drawn_unnormalised():
    from PIL import Image
    from transformers import ViTImageProcessor

    model = build("vit", constants=True)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    array = (torch.arange(16 * 16 * 3) % 256).reshape(16, 16, 3).to(torch.uint8).numpy()
    picture = Image.fromarray(array)
    exp = attnlrp.explain_image(model, picture, processor=processor)
    direct = attnlrp.explain_image(model, processor(images=[picture], return_tensors="pt")["pixel_values"][0])
    assert abs(exp.image.astype(int) - array.astype(int)).max() <= 1
    assert exp.value == pytest.approx(direct.value) and (exp.scores == direct.scores).all()
    # grayscale and RGBA pictures are read as RGB, as the model takes them
    for mode in ("L", "RGBA"):
        other = picture.convert(mode)
        as_rgb = attnlrp.explain_image(model, other.convert("RGB"), processor=processor)
        assert (attnlrp.explain_image(model, other, processor=processor).scores == as_rgb.scores).all()

    # a torchvision-style transform (one image in, its pixel tensor out) serves as the processor too
    def transform(image):
        return torch.tensor(np.asarray(image), dtype=torch.float64).permute(2, 0, 1) / 255

    by_transform = attnlrp.explain_image(model, [picture, picture], processor=transform)
    assert (
        len(by_transform) == 2
        and (by_transform[0].scores == attnlrp.explain_image(model, transform(picture)).scores).all()
    )
    with pytest.raises(attnlrp.InputError, match=r"Pixel values must be floats .* not torch\.uint8"):
        attnlrp.explain_image(model, torch.from_numpy(array).permute(2, 0, 1))
    # explain() takes image classifiers too, with the same default method
    through_explain = attnlrp.explain(model, processor, picture)
    assert through_explain.method == exp.method == "cp-lrp" and (through_explain.scores == exp.scores).all()


def test_explain_image_on_a_model_of_another_task_says_which_call_to_use(tiny_lm):
    with pytest.raises(attnlrp.InputError, match=r"LlamaForCausalLM is a causal-lm model, not an image classifier"):
        attnlrp.explain_image(tiny_lm, pixels()[0])


def test_the_command_line_explains_an_image_as_explain_image_does(tmp_path, monkeypatch, capsys):
    # the same default method (CP-LRP) and numbers; the CLI's default was AttnLRP for images too
    from PIL import Image
    from transformers import ViTImageProcessor

    model = build("vit", constants=True)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    path = tmp_path / "picture.png"
    Image.fromarray((torch.arange(16 * 16 * 3) % 256).reshape(16, 16, 3).to(torch.uint8).numpy()).save(path)
    monkeypatch.setattr(cli, "_load", lambda args: (model, processor))
    assert cli.main(["explain", "--image", str(path), "--label", "LABEL_2", "--json", str(tmp_path / "e.json")]) == 0
    shown = attnlrp.ImageExplanation.load(tmp_path / "e.json")
    direct = attnlrp.explain_image(model, Image.open(path), target="LABEL_2", processor=processor)
    assert shown.method == direct.method == "cp-lrp"
    assert shown.value == pytest.approx(direct.value) and shown.scores == pytest.approx(direct.scores)
    assert f"saved {tmp_path / 'e.json'}" in capsys.readouterr().out
    # a class by index, as explain_image takes it; options of text are refused, not ignored
    assert cli.main(["explain", "--image", str(path), "--target-id", "2", "--json", str(tmp_path / "i.json")]) == 0
    assert attnlrp.ImageExplanation.load(tmp_path / "i.json").scores == pytest.approx(shown.scores)
    prompts = tmp_path / "images.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "image": str(path)}) + "\n", encoding="utf-8")
    assert cli.main(["explain", "--input", str(prompts), "--output", str(tmp_path / "out.jsonl")]) == 2
    assert "is an image classifier, and a dataset run explains text" in capsys.readouterr().err
    for extra, says in (
        (["--contrast", "LABEL_1"], "--contrast would be ignored"),
        (["--top", "3", "--words"], "--top, --words would be ignored"),
        (["some text"], "a prompt would be ignored"),
        (["--label", "LABEL_1"], "Give the class once"),
    ):
        capsys.readouterr()
        assert cli.main(["explain", "--image", str(path), "--target-id", "2", *extra]) == 2
        assert says in capsys.readouterr().err
    # text where an image goes: one line that says what to give instead
    with pytest.raises(attnlrp.InputError, match="ViTForImageClassification is an image model, and 'a cat' is text"):
        attnlrp.explain_image(model, "a cat", processor=processor)
    assert cli.main(["explain", "a cat"]) == 2
    assert "explains an image's class: give the image (--image PATH)" in capsys.readouterr().err


def test_a_class_index_may_be_a_torch_or_numpy_integer():
    # a 0-d tensor (logits.argmax()) was read as a target vector: "must have the output's size 5, not 1"
    model = build("vit", constants=True)
    pixels = torch.rand(3, 16, 16, dtype=torch.float64)
    by_index = attnlrp.explain_image(model, pixels, target=2)
    for given in (torch.tensor(2), np.int64(2)):
        assert attnlrp.explain_image(model, pixels, target=given).value == by_index.value


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16)])
def test_pixel_values_of_another_size_name_the_size_the_model_takes(shape):
    # transformers' own check, deep in the embeddings, said what was wrong but not what to do
    model = build("vit", constants=True)
    with pytest.raises(
        attnlrp.InputError, match=r"takes pixel values of 3 x 16 x 16 .* pass the images with processor="
    ):
        attnlrp.explain_image(model, torch.rand(shape, dtype=torch.float64))


def test_a_label_name_on_a_model_without_names_asks_for_a_class_index():
    from attnlrp.tasks.image import _resolve

    model, vector = torch.nn.Linear(2, 3), torch.tensor([0.1, 0.9, 0.3])  # a torchvision model has no config
    with pytest.raises(attnlrp.InputError, match=r"Linear has no label names .* give a class index, 0\.\.2\."):
        _resolve(model, "cat", vector)
    assert _resolve(model, "2", vector)[2] == 2  # --label 2 on the command line


def test_a_tensor_of_class_indices_is_one_class_per_image():
    # an integer tensor (logits.argmax(-1)) was explained as a direction: output · [0, 1, ...] for every image
    model = build("vit", constants=True)
    images, classes = pixels(3), torch.tensor([4, 0, 2])
    by_list = attnlrp.explain_image(model, images, target=[4, 0, 2])
    for given in (classes, classes.numpy()):
        by_tensor = attnlrp.explain_image(model, images, target=given)
        assert [e.target_index for e in by_tensor] == [4, 0, 2]
        assert all((a.scores == b.scores).all() for a, b in zip(by_tensor, by_list))
    with pytest.raises(attnlrp.InputError, match="2 targets were given for 3 images"):
        attnlrp.explain_image(model, images, target=torch.tensor([1, 2]))
    with pytest.raises(attnlrp.InputError, match="target=True is no class"):
        attnlrp.explain_image(model, images[0], target=True)
    labelled = build("vit", constants=True)
    labelled.config.id2label, labelled.config.label2id = {i: f"c{i}" for i in range(5)}, {f"c{i}": i for i in range(5)}
    assert attnlrp.explain_image(labelled, images[0], target="2").target == "c2", "--label 2: a class index"


def test_image_batches_in_every_form_give_one_result_per_image():
    from transformers import ViTImageProcessor

    model = build("vit", constants=True)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    arrays = (np.arange(2 * 16 * 16 * 3).reshape(2, 16, 16, 3) * 7 % 256).astype(np.uint8)
    one_by_one = [attnlrp.explain_image(model, a, processor=processor) for a in arrays]
    # [B, H, W, C] arrays: one result came back (the first image's)
    stacked = attnlrp.explain_image(model, arrays, processor=processor)
    features = processor(images=list(arrays), return_tensors="pt")
    from_features = attnlrp.explain_image(model, features)  # the processor's output (a BatchFeature)
    from_tensors = attnlrp.explain_image(model, list(features["pixel_values"]))  # a list of [C, H, W] tensors
    for results in (stacked, from_features, from_tensors):
        assert len(results) == 2
        for got, alone in zip(results, one_by_one):
            np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-6, atol=1e-12)
    with pytest.raises(attnlrp.InputError, match="the processor given makes another size: give the model's own"):
        attnlrp.explain_image(model, arrays[0], processor=ViTImageProcessor(size={"height": 32, "width": 32}))


def test_a_one_channel_model_takes_pil_images_through_its_processor():
    from PIL import Image
    from transformers import ViTImageProcessor

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**SIZE, num_channels=1, num_labels=3)).double().eval()
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5])
    picture = Image.fromarray((np.arange(256).reshape(16, 16) % 256).astype(np.uint8), mode="L")
    for given in (picture, picture.convert("RGB")):  # images were made RGB: "mean must have 3 elements"
        exp = attnlrp.explain_image(model, given, processor=processor)
        direct = attnlrp.explain_image(model, processor(images=[picture], return_tensors="pt")["pixel_values"][0])
        assert exp.scores.shape == (16, 16) and exp.value == pytest.approx(direct.value)


def test_the_command_line_audits_an_image_model_on_an_image_of_its_size(tmp_path, capsys):
    # "pass example_inputs (a tensor, or a dict of forward arguments)": Python advice, and no way to give one
    from transformers import ViTImageProcessor

    build("vit", constants=True).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    assert cli.main(["audit", "--model", str(tmp_path / "vit"), "--method", "cp-lrp"]) == 0, capsys.readouterr().err
    assert "every op had a rule" in capsys.readouterr().out
