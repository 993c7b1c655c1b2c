"""transformers 5.x (this environment) and 4.x (.venv-tf4, made by `make test`) give the same relevance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "tf_version_probe.py"
TF4_PYTHON = ROOT / ".venv-tf4" / "bin" / "python"

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=97, max_position_embeddings=64)
FAMILIES = {
    "llama": ("LlamaForCausalLM", {**BASE, "num_key_value_heads": 2, "intermediate_size": 96}),
    "gemma": ("GemmaForCausalLM", {**BASE, "num_key_value_heads": 2, "intermediate_size": 96, "head_dim": 16}),
    "gpt2": (
        "GPT2LMHeadModel",
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=97, bos_token_id=0, eos_token_id=0),
    ),
}


def _run(python: Path, specs: Path) -> list[dict]:
    done = subprocess.run(
        [str(python), str(PROBE), str(specs)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def both_versions(tmp_path_factory):
    assert TF4_PYTHON.exists(), "the transformers-4 environment is missing: run `make test` (it creates .venv-tf4)"
    folder = tmp_path_factory.mktemp("versions")
    specs = []
    for family, (cls, config_kwargs) in FAMILIES.items():
        torch.manual_seed(0)
        model = getattr(transformers, cls)._from_config(transformers.AutoConfig.for_model(family, **config_kwargs))
        weights = folder / f"{family}.safetensors"
        save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, weights)
        ids = torch.randint(0, 97, (10,), generator=torch.Generator().manual_seed(1)).tolist()
        specs.append(
            {"family": family, "class": cls, "config": config_kwargs, "weights": str(weights), "ids": ids, "target": 5}
        )
    (folder / "specs.json").write_text(json.dumps(specs))
    new, old = _run(Path(sys.executable), folder / "specs.json"), _run(TF4_PYTHON, folder / "specs.json")
    return dict(zip(FAMILIES, new)), dict(zip(FAMILIES, old))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_4_and_5_agree(family, both_versions):
    new, old = (versions[family] for versions in both_versions)
    assert new["transformers"].startswith("5.") and old["transformers"].startswith("4.")
    for key in ("eager/attnlrp", "eager/cp-lrp", "sdpa/attnlrp", "sdpa/cp-lrp"):
        assert new[key]["logit"] == pytest.approx(old[key]["logit"], rel=1e-9), key
        assert torch.allclose(
            torch.tensor(new[key]["scores"]), torch.tensor(old[key]["scores"]), rtol=1e-6, atol=1e-9
        ), key
        assert any(abs(s) > 1e-6 for s in new[key]["scores"]), key  # a real explanation, not zeros
