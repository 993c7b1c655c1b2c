"""Relevance of a tiny model rebuilt from config kwargs and a weight file, under whatever transformers
is installed. Run by tests/test_transformers_versions.py in the main and the transformers-4 environment.

usage: python tf_version_probe.py SPECS.json  (a list of specs; prints a JSON list to stdout)
"""

from __future__ import annotations

import json
import sys

import torch
import transformers
from safetensors.torch import load_file

import attnlrp


def relevance(spec: dict) -> dict:
    config = transformers.AutoConfig.for_model(spec["family"], **spec["config"])
    results = {"transformers": transformers.__version__}
    ids = torch.tensor([spec["ids"]])
    for implementation in ("eager", "sdpa"):
        model = getattr(transformers, spec["class"])._from_config(config, attn_implementation=implementation)
        missing, _ = model.load_state_dict(load_file(spec["weights"]), strict=False)
        parameters = {name for name, _ in model.named_parameters()}
        if parameters & set(missing):
            raise SystemExit(f"weights missing for {sorted(parameters & set(missing))}")
        model = model.double().eval()
        for method in ("attnlrp", "cp-lrp"):
            with attnlrp.lrp(model, method=method) as binding:
                logits = model(input_ids=ids).logits[0, -1]
                logits[spec["target"]].backward()
                scores = (binding.embeddings * binding.embeddings.grad).sum(-1)[0]
            results[f"{implementation}/{method}"] = {"logit": float(logits[spec["target"]]), "scores": scores.tolist()}
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps([relevance(spec) for spec in json.load(f)]))
