"""A ground truth for image explanations, offline: a synthetic task whose deciding patch is known.

Each image is noise with patches stamped on the model's patch grid: one class pattern (horizontal,
vertical, checkered or diagonal stripes; the class is which one) and distractors (rings, of higher
contrast) that no class depends on. A small ViT trained on it must look at the class pattern, so an
explanation should point there: the pointing game scores how often the most relevant patch is it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

#: The class of each stripe pattern, in label order.
CLASSES = ("horizontal", "vertical", "checkered", "diagonal")


def _patterns(size: int) -> Tensor:
    """[5, size, size] in {-1, +1}: four class patterns, then the distractor (a ring)."""
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ring = torch.maximum((i - (size - 1) / 2).abs(), (j - (size - 1) / 2).abs()) >= (size - 1) / 2 - 1
    masks = [i % 2 == 0, j % 2 == 0, (i + j) % 2 == 0, ((i + j) // 2) % 2 == 0, ring]
    return torch.stack([m.float() * 2 - 1 for m in masks])


@dataclass(frozen=True)
class PatchTask:
    """Images of ``image_size`` pixels on a grid of ``patch_size`` patches; 4 classes."""

    image_size: int = 32
    patch_size: int = 8
    noise: float = 0.8
    contrast: float = 1.0
    distractors: int = 2
    distractor_contrast: float = 1.5

    classes = len(CLASSES)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(images [n, 3, H, W], labels [n], index of each image's deciding patch [n], row-major)."""
        cells = self.grid * self.grid
        images = self.noise * torch.randn(n, 3, self.image_size, self.image_size, generator=generator)
        labels = torch.randint(0, self.classes, (n,), generator=generator)
        cells_of = torch.rand(n, cells, generator=generator).argsort(-1)[:, : 1 + self.distractors]
        deciding = cells_of[:, 0]
        patterns = _patterns(self.patch_size - 2)
        for k in range(n):
            rings = [self.distractor_contrast * patterns[-1]] * self.distractors
            stamps = [self.contrast * patterns[labels[k]]] + rings
            for cell, pattern in zip(cells_of[k], stamps):
                top, left = divmod(int(cell), self.grid)
                y, x = top * self.patch_size + 1, left * self.patch_size + 1
                images[k, :, y : y + self.patch_size - 2, x : x + self.patch_size - 2] = pattern
        return images, labels, deciding


def tiny_vit(task: PatchTask, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> nn.Module:
    """An untrained HF ViTForImageClassification sized for the task."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=task.image_size,
        patch_size=task.patch_size,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return ViTForImageClassification(config)


def train(
    model: nn.Module, task: PatchTask, steps: int = 600, batch: int = 128, lr: float = 2e-3, seed: int = 0
) -> float:
    """Train on fresh samples (AdamW, one-cycle schedule); returns the accuracy on 512 held-out images."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        images, labels, _ = task.sample(batch, generator)
        loss = nn.functional.cross_entropy(model(pixel_values=images).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    images, labels, _ = task.sample(512, torch.Generator().manual_seed(seed + 10_000))
    with torch.no_grad():
        return float((model(pixel_values=images).logits.argmax(-1) == labels).float().mean())


def gradient_maps(model: nn.Module, images: Tensor, labels: Tensor, times_input: bool = False) -> np.ndarray:
    """Baselines with plain autograd, [n, H, W]: Σ_c |∂y/∂x| (gradient) or Σ_c x ∂y/∂x (Input×Gradient)."""
    x = images.detach().clone().requires_grad_()
    logits = model(pixel_values=x).logits
    logits.gather(1, labels.unsqueeze(1)).sum().backward()
    maps = (x * x.grad) if times_input else x.grad.abs()
    return maps.sum(1).detach().float().numpy()


def pointing_accuracy(maps: np.ndarray, deciding: Tensor, patch_size: int) -> float:
    """The share of maps [n, H, W] whose most relevant patch (sum over its pixels) is the deciding one."""
    n, h, w = maps.shape
    per_patch = maps.reshape(n, h // patch_size, patch_size, w // patch_size, patch_size).sum(axis=(2, 4))
    hits = per_patch.reshape(n, -1).argmax(-1) == deciding.numpy()
    return float(hits.mean())
