"""AttnLRP and CP-LRP as Inseq methods (attnlrp.interop.inseq), run in Inseq's own environment: .venv-inseq
(Inseq 0.7.1 with captum 0.9.0, torch 2.13.0, transformers 5.23.0; `make test` creates it) by tests/inseq_probe.py.

Inseq's relevance equals attnlrp's own for every generated token: ``attnlrp.explain`` on a decoder-only LLaMA,
the engine (``attnlrp.lrp``) on T5 and BART encoder-decoders (source and decoder prefix); its convergence deltas
are y - Σ R; its outputs aggregate by summing, show, save and load; and nothing of Inseq or the model is left
changed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parents[1]
INSEQ_PYTHON = ROOT / ".venv-inseq" / "bin" / "python"
TOLERANCE = 1e-6  # relative to the largest relevance: Inseq keeps its attributions in float32


@pytest.fixture(scope="module")
def probe(tokenizer, tmp_path_factory) -> dict:
    assert INSEQ_PYTHON.exists(), "the Inseq environment is missing: run `make test` (it creates .venv-inseq)"
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    done = subprocess.run(
        [str(INSEQ_PYTHON), str(ROOT / "tests" / "inseq_probe.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def close(inseq: list[float], ours: list[float]) -> None:
    ours = np.asarray(ours)
    assert np.abs(ours).max() > 1e-6, "a relevance map that is not trivially zero"
    np.testing.assert_allclose(inseq, ours, rtol=0, atol=TOLERANCE * np.abs(ours).max())


def test_versions_and_registration(probe):
    assert probe["versions"]["inseq"] == "0.7.1" and probe["versions"]["captum"] == "0.9.0"
    assert {"attnlrp", "cp-lrp"} <= set(probe["methods"]) and "input_x_gradient" in probe["methods"]


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_decoder_only_equals_explain(probe, method):
    report = probe["llama"][method]
    assert len(report["steps"]) == 3 and report["class"] == "RelevanceSequenceOutput"
    for step in report["steps"]:
        close(step["inseq"], step["ours"])
        assert step["delta"] == pytest.approx(step["ours_delta"], abs=1e-6 * abs(step["value"]))
    if method == "cp-lrp":  # a bias-free LLaMA: CP-LRP conserves
        assert all(abs(step["delta"]) < 1e-6 * abs(step["value"]) for step in report["steps"])
    else:
        assert all(abs(step["delta"]) > 1e-3 for step in report["steps"])


def test_inseqs_default_target_the_probability_equals_explain(probe):
    close(probe["llama"]["probability"]["inseq"], probe["llama"]["probability"]["ours"])


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_equals_the_engine(probe, arch, method):
    steps = probe[arch][method]["steps"]
    assert len(steps) >= 2
    for step in steps:
        close(step["inseq_source"] + step["inseq_target"], step["ours_source"] + step["ours_target"])
        assert step["delta"] == pytest.approx(step["ours_delta"], abs=1e-6 * abs(step["value"]))
    if (arch, method) == ("t5", "cp-lrp"):  # T5 has no biases: source and prefix together conserve
        assert all(abs(step["delta"]) < 1e-9 * abs(step["value"]) for step in steps)


def test_aggregation_sums_signed_relevance(probe):
    outputs = probe["llama"]["outputs"]
    raw, default = np.array(outputs["raw"]), np.array(outputs["default"])
    assert (raw < 0).any(), "summed relevance keeps its sign (Inseq's L2 norm would not)"
    np.testing.assert_allclose(default, raw / np.abs(raw).sum(0), atol=1e-6)  # each column normalised (L1)
    merged = np.array(outputs["merged"])
    assert outputs["merged_tokens"][:3] == ["The", "ĠEiffel", "ĠTower"]
    np.testing.assert_allclose(merged[1], raw[1] + raw[2], atol=1e-6)  # a span's relevance is its tokens' sum
    np.testing.assert_allclose(merged[2:], raw[3:], atol=1e-6)


def test_display_save_and_load(probe):
    outputs = probe["llama"]["outputs"]
    assert outputs["html_has_tokens"]
    assert outputs["loaded_equal"] and outputs["loaded_aggregated_equal"]
    assert outputs["loaded_class"] == "RelevanceSequenceOutput" and outputs["loaded_aggregator"] == "sum"
    assert outputs["info_method"] == "attnlrp"


def test_nothing_of_inseq_or_the_model_is_left_changed(probe):
    defaults = probe["llama"]["defaults"]
    assert defaults["shared"]["target_attributions"] == {"spans": "absmax", "scores": "vnorm"}
    assert defaults["input_x_gradient"] == ["vnorm", {"spans": "absmax", "scores": "vnorm"}]
    assert defaults["ours"] == ["sum", {"spans": "sum", "scores": "sum"}]
    clean = {"hooks": 0, "bound": False, "requires_grad": True}
    assert probe["llama"]["state_before"] == clean
    for arch in ("llama", "t5", "bart"):
        for method in ("attnlrp", "cp-lrp"):
            assert probe[arch][method]["state"] == clean, (arch, method)
