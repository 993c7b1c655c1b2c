"""Which patch does a ViT look at? A tiny ViT trained here on a task with a known answer, explained.

Run with `python examples/vision_example.py` (offline, about ten seconds on one CPU core). Each image is
noise with one striped patch (its kind is the class) and two brighter rings that no class depends on;
the explanation should light up the stripes, not the rings. Writes docs/img/vision_example.png.
"""

from pathlib import Path

import torch
from torch import nn

import attnlrp
from attnlrp.evaluate.pointing import PatchTask, tiny_vit, train

torch.set_num_threads(1)
task = PatchTask()
model = tiny_vit(task, hidden=32, layers=1, heads=2, seed=0)
print(f"held-out accuracy: {train(model, task, steps=150, batch=64, lr=3e-3, seed=0):.3f}")

images, labels, deciding = task.sample(4, torch.Generator().manual_seed(7))
gamma = {nn.Conv2d: attnlrp.Gamma(0.25), nn.Linear: attnlrp.Gamma(0.05)}
# four images, one backward, each explained for its own true class; CP-LRP is explain_image's default
explanations = attnlrp.explain_image(model, images, target=labels.tolist(), layer_rules=gamma)
for exp, cell in zip(explanations, deciding.tolist()):
    print(exp, "| most relevant patch", exp.top_patch(), "deciding patch", divmod(cell, task.grid))

out = Path(__file__).resolve().parent.parent / "docs" / "img" / "vision_example.png"
attnlrp.save_image_grid(
    out, explanations, titles=[f"{e.target}, y = {e.value:.2f}" for e in explanations], show_images=True
)
print(f"wrote {out}")
