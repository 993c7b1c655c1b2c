"""ImageExplanation: heatmap and overlay PNGs, a γ-sweep grid, patches, JSON save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

import attnlrp
from attnlrp import ImageExplanation


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=3,
    )
    return ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))


def synthetic():
    scores = np.zeros((8, 8), dtype=np.float32)
    scores[:4, :4], scores[4:, 4:] = 1.0, -0.5
    picture = np.full((8, 8, 3), 128, dtype=np.uint8)
    return ImageExplanation(scores=scores, target="cat", value=2.0, method="cp-lrp", image=picture, patch_size=4)


def test_heatmap_and_overlay_are_pngs_in_diverging_colours(tmp_path):
    exp = synthetic()
    heat = imread(exp.save_heatmap(tmp_path / "heat.png", size=64))
    over = imread(exp.save_overlay(tmp_path / "over.png", size=64))
    assert heat.shape[:2] == over.shape[:2] == (64, 64)
    for rgb in (heat, over):
        red, blue, zero = rgb[0, 0, :3], rgb[-1, -1, :3], rgb[0, -1, :3]
        assert red[0] > red[2] and blue[2] > blue[0]  # + is red, - is blue
        assert abs(float(zero[0]) - float(zero[2])) < 0.02  # 0 is neutral
    assert heat[-1, -1, 0] > heat[0, 0, 2]  # symmetric range: -0.5 is a paler blue than +1 is red


def test_patches_and_top_patch():
    exp = synthetic()
    np.testing.assert_array_equal(exp.patches(), [[16.0, 0.0], [0.0, -8.0]])
    assert exp.top_patch() == (0, 0) and exp.total == pytest.approx(8.0)
    with pytest.raises(ValueError, match="does not divide"):
        exp.patches(3)


@pytest.mark.parametrize("name", ["exp.json", "exp.json.gz"])
def test_save_and_load_round_trip(tmp_path, vit, image, name):
    exp = attnlrp.explain_image(vit, image, layer_rules={nn.Linear: attnlrp.Gamma(0.1)})
    assert exp.rules == "Linear: Gamma(0.1)"
    loaded = ImageExplanation.load(exp.save(tmp_path / name))
    assert loaded == exp and loaded.image.dtype == np.uint8
    assert "import" not in (tmp_path / name).read_bytes().decode("latin-1")[:20]  # JSON, not pickle


def test_loading_another_kind_of_file_says_which_class_writes_it(tmp_path):
    path = attnlrp.Explanation(tokens=["a"], display=["a"], scores=[1.0], target="b", value=1.0, method="attnlrp").save(
        tmp_path / "text.json"
    )
    with pytest.raises(attnlrp.ResultFileError, match=r"found 'explanation'\); read it with Explanation\.load\(\)"):
        ImageExplanation.load(path)


def test_gamma_sweep_grid(tmp_path, vit, image):
    gammas = [0.0, 0.25, 1.0]
    sweep = [
        attnlrp.explain_image(vit, image, layer_rules={nn.Conv2d: attnlrp.Gamma(g), nn.Linear: attnlrp.Gamma(g)})
        for g in gammas
    ]
    assert not np.allclose(sweep[0].scores, sweep[-1].scores)
    figure = imread(attnlrp.save_image_grid(tmp_path / "sweep.png", sweep, titles=[f"γ={g}" for g in gammas]))
    assert figure.shape[1] > 2 * figure.shape[0]  # one row of three panels
    with pytest.raises(ValueError, match="2 titles for 3"):
        attnlrp.save_image_grid(tmp_path / "x.png", sweep, titles=["a", "b"])


def test_overlay_needs_an_image(tmp_path):
    exp = synthetic()
    exp.image = None
    with pytest.raises(ValueError, match="save_heatmap"):
        exp.save_overlay(tmp_path / "x.png")
