"""torchvision's and timm's vision transformers through the same engine, run in .venv-vision (torch 2.14.1 with
torchvision and timm; `make test` creates it) by tests/vision_env_probe.py.

torchvision's ViT attends with ``nn.MultiheadAttention``, timm's with its own module (fused or explicit): given
torchvision's weights, the timm and the HF ViT compute the same function, so all three must give the same
relevance, under AttnLRP and CP-LRP, and CP-LRP must conserve once the constants are zero.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parents[1]
VISION_PYTHON = ROOT / ".venv-vision" / "bin" / "python"


@pytest.fixture(scope="module")
def probe() -> dict:
    assert VISION_PYTHON.exists(), "the vision environment is missing: run `make test` (it creates .venv-vision)"
    done = subprocess.run(
        [str(VISION_PYTHON), str(ROOT / "tests" / "vision_env_probe.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_versions(probe):
    versions = probe["versions"]
    assert versions["torchvision"].startswith("0.29") and versions["timm"].startswith("1.")


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("other", ["timm-eager", "timm-sdpa", "hf-eager", "hf-sdpa"])
def test_same_weights_same_relevance(probe, other, method):
    reference, result = probe[f"torchvision/{method}"], probe[f"{other}/{method}"]
    tolerance = 1e-6 if other == "hf-eager" else 1e-9  # HF's eager attention takes its softmax in float32
    np.testing.assert_allclose(result["y"], reference["y"], rtol=tolerance)
    scores = np.array(reference["scores"])
    assert np.abs(scores).max() > 1e-3, "a relevance map that is not trivially zero"
    np.testing.assert_allclose(result["scores"], scores, rtol=tolerance, atol=tolerance * np.abs(scores).max())


@pytest.mark.parametrize("name", ["torchvision", "timm"])
def test_cp_lrp_conserves_without_constants(probe, name):
    result = probe[f"{name}/bias-free/cp-lrp"]
    np.testing.assert_allclose(result["total"], result["y"], rtol=1e-9)


@pytest.mark.parametrize("name", ["torchvision", "timm", "vit_b_16"])
def test_audit_is_clean(probe, name):
    reports = probe[f"{name}/audit"]
    for report in reports.values() if isinstance(reports, dict) else [reports]:
        assert "every op had a rule or is linear" in report, report
        assert "attention kernel" in report


def test_explain_image_on_vit_b_16(probe):
    result = probe["vit_b_16/explain_image"]
    assert result == {"shape": [224, 224], "target": "7", "method": "cp-lrp", "finite": True}


def test_patches_know_the_model_patch_size(probe):
    """torchvision's vit_b_16 says its patch size (16) as ``patch_size``, timm's as ``patch_embed.patch_size``."""
    patches = probe["vit_b_16/patches"]
    assert patches["patch_size"] == 16 and patches["grid"] == [14, 14]
    assert all(0 <= i < 14 for i in patches["top"])
    assert probe["timm/patch_size"] == 4
