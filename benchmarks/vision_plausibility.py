#!/usr/bin/env python
"""Do image explanations point at what decides the class? The pointing game on a known ground truth.

    python benchmarks/vision_plausibility.py            # trains (about a minute on one CPU core) or reuses
    python benchmarks/vision_plausibility.py --retrain  # trains again

The task (attnlrp.evaluate.pointing.PatchTask): 32x32 noise images with one class pattern (4 kinds of stripes:
the class) and two class-neutral rings of higher contrast, each on a cell of the 4x4 patch grid. A
small HF ViTForImageClassification (patch 8, hidden 64, 2 layers, 4 heads) is trained on fresh
samples (seed 0) and saved with save_pretrained under out/vision_plausibility/model. On 512 held-out
images, each method's map is summed per patch; a hit is the deciding patch scoring highest.

Methods: γ-LRP (CP-LRP attention, Gamma on Conv2d 0.25 and Linear 0.05 and a sweep of γ),
CP-LRP, AttnLRP, the plain gradient (Σ_c |∂y/∂x|) and Input×Gradient (Σ_c x ∂y/∂x), all for the
true class's logit. Writes the table to stdout and a γ-sweep grid to out/vision_plausibility/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import attnlrp
from attnlrp.evaluate.pointing import PatchTask, gradient_maps, pointing_accuracy, tiny_vit, train

OUT = Path(__file__).resolve().parent.parent / "out" / "vision_plausibility"
GAMMAS = (0.0, 0.05, 0.25, 1.0)


def trained_model(task: PatchTask, retrain: bool) -> tuple[nn.Module, str]:
    """The task's ViT: loaded from OUT when saved there, else trained (seed 0) and saved."""
    from transformers import ViTForImageClassification

    folder = OUT / "model"
    if folder.exists() and not retrain:
        return ViTForImageClassification.from_pretrained(folder).eval(), "loaded"
    model = tiny_vit(task, hidden=64, layers=2, heads=4, seed=0)
    accuracy = train(model, task, steps=600, batch=128, lr=2e-3, seed=0)
    model.save_pretrained(folder)
    return model, f"trained, held-out accuracy {accuracy:.3f}"


def lrp_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str, rules=None) -> np.ndarray:
    explanations = attnlrp.explain_image(
        model, images, target=labels.tolist(), method=method, layer_rules=rules, batch_size=128
    )
    return np.stack([e.scores for e in explanations])


def gamma_rules(gamma: float) -> dict:
    return {nn.Conv2d: attnlrp.Gamma(gamma), nn.Linear: attnlrp.Gamma(gamma / 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train again even if weights are saved")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread is faster than two fighting for cores
    task = PatchTask()
    model, how = trained_model(task, args.retrain)
    images, labels, deciding = task.sample(args.images, torch.Generator().manual_seed(2024))
    with torch.no_grad():
        accuracy = float((model(pixel_values=images).logits.argmax(-1) == labels).float().mean())
    maps = {
        "γ-LRP (Conv γ=0.25, Linear γ=0.05; CP-LRP attention)": lrp_maps(
            model, images, labels, "cp-lrp", gamma_rules(0.25)
        ),
        "CP-LRP": lrp_maps(model, images, labels, "cp-lrp"),
        "AttnLRP": lrp_maps(model, images, labels, "attnlrp"),
        "gradient (Σ_c abs(∂y/∂x))": gradient_maps(model, images, labels),
        "Input×Gradient": gradient_maps(model, images, labels, times_input=True),
    }
    for gamma in GAMMAS:
        maps[f"γ sweep: Conv γ={gamma:g}, Linear γ={gamma / 5:g}"] = lrp_maps(
            model, images, labels, "cp-lrp", gamma_rules(gamma)
        )
    print(f"model: {how}; accuracy on the {args.images} evaluation images {accuracy:.3f}\n")
    print("| method | pointing-game accuracy |\n|---|---|")
    for name, m in maps.items():
        print(f"| {name} | {pointing_accuracy(m, deciding, task.patch_size):.3f} |")
    sweep = [attnlrp.explain_image(model, images[0], target=int(labels[0]), layer_rules=gamma_rules(g)) for g in GAMMAS]
    grid = attnlrp.save_image_grid(OUT / "gamma_sweep.png", sweep, titles=[f"γ = {g:g}" for g in GAMMAS])
    print(f"\nγ sweep of the first image: {grid}")


if __name__ == "__main__":
    main()
