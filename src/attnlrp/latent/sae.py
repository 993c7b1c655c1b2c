"""A TopK sparse autoencoder (SAE) at one site of a model: its math, training on CPU, saving and loading.

z = TopK(ReLU(W_enc (h - b_dec) + b_enc)) keeps the k largest pre-activations of each token; the reconstruction
is z W_dec + b_dec, with unit-norm decoder rows (each latent's direction in the site's space).

How relevance passes through it (``SiteRecorder`` puts it in the forward): the output h of the site's module
becomes h' = h + (recon - stopgrad(recon)), which is h exactly, while the backward reaches h only through the
latents. The decoder is linear (LRP-0: R_z = z * (W_dec g)), the TopK mask is a constant and ReLU gets the
identity rule, the encoder is linear again. What the SAE doesn't reconstruct, err = h - recon, is a constant:
its relevance err * g is carried as its own term, and so is the decoder bias's, b_dec * g. Hence
Σ R_z + R_bias + R_err = Σ h * g at the site, and below the site the input relevance sums to Σ R_z less what
the encoder biases absorb.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LatentError
from ..loading import cache_root


class SAE(nn.Module):
    """A TopK sparse autoencoder reading the output of the module at ``site`` (a module path) of a model.

    Its parameters don't require gradients (only ``train_sae`` trains them), so inside ``attnlrp.lrp`` its
    weights are constants like the model's.
    """

    def __init__(self, d_in: int, width: int, k: int, site: str, model: str = "", stats: dict | None = None):
        super().__init__()
        if not 0 < k <= width:
            raise LatentError(f"An SAE keeps k of its {width} latents per token: k must be in 1..{width}, not {k}.")
        self.d_in, self.width, self.k, self.site, self.model = d_in, width, k, site, model
        self.stats = dict(stats or {})
        self.source = ""  # the folder it was loaded from, if any (atlases reload it from there)
        self.W_enc = nn.Parameter(torch.zeros(width, d_in), requires_grad=False)
        self.b_enc = nn.Parameter(torch.zeros(width), requires_grad=False)
        self.W_dec = nn.Parameter(torch.zeros(width, d_in), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(d_in), requires_grad=False)

    @property
    def name(self) -> str:
        """The name of its site in atlases and results: ``<module path>@sae``."""
        return f"{self.site}@sae"

    def encode(self, h: Tensor) -> Tensor:
        """The latents [..., width] of site outputs h [..., d_in] (in h's dtype)."""
        pre = F.linear(h - self.b_dec.to(h.dtype), self.W_enc.to(h.dtype), self.b_enc.to(h.dtype))
        with torch.no_grad():
            mask = torch.zeros_like(pre).scatter_(-1, pre.topk(self.k, dim=-1).indices, 1.0)
        return F.relu(pre) * mask

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction [..., d_in] of latents z."""
        return F.linear(z, self.W_dec.to(z.dtype).t(), self.b_dec.to(z.dtype))

    def forward(self, h: Tensor) -> Tensor:
        return self.decode(self.encode(h))

    def extra_repr(self) -> str:
        return f"site={self.site!r}, d_in={self.d_in}, width={self.width}, k={self.k}"

    def save(self, folder: str | Path) -> Path:
        """Write ``sae.safetensors`` and ``sae.json`` (no pickle) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}, folder / "sae.safetensors"
        )
        config = {"d_in": self.d_in, "width": self.width, "k": self.k, "site": self.site, "model": self.model}
        (folder / "sae.json").write_text(json.dumps({**config, "stats": self.stats}, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SAE:
        """An SAE written by ``save``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "sae.json").is_file() or not (folder / "sae.safetensors").is_file():
            raise LatentError(f"{folder} holds no SAE (sae.json and sae.safetensors, written by SAE.save).")
        config = json.loads((folder / "sae.json").read_text(encoding="utf-8"))
        sae = cls(config["d_in"], config["width"], config["k"], config["site"], config["model"], config.get("stats"))
        sae.load_state_dict(load_file(folder / "sae.safetensors"))
        sae.source = str(folder.resolve())
        return sae


def sae_folder(name: str) -> Path:
    """Where the SAE called ``name`` is cached: ``<cache_root>/sae/<name>``."""
    return cache_root() / "sae" / name


def load_sae(name_or_folder: str | Path) -> SAE:
    """A cached SAE by name (``make sae`` trains the bundled model's), or one from a folder."""
    folder = Path(name_or_folder)
    if not (folder / "sae.json").is_file():
        folder = sae_folder(str(name_or_folder))
    if not (folder / "sae.json").is_file():
        known = sorted(p.name for p in (cache_root() / "sae").glob("*") if (p / "sae.json").is_file())
        raise LatentError(
            f"No SAE called {str(name_or_folder)!r} in {cache_root() / 'sae'} ("
            + (f"there are: {', '.join(known)}" if known else "none is cached")
            + "); `make sae` trains the bundled model's."
        )
    return SAE.load(folder)


def site_outputs(
    model: nn.Module, tokenizer, texts: list[str], site: str, max_tokens: int = 64, batch_size: int = 16
) -> Tensor:
    """The outputs of module ``site`` at every real token of ``texts`` but the first, [N, d] float32 (no
    gradients). The first token is left out: its residual stream is the attention sink, with a norm tens of
    times the others'."""
    modules = dict(model.named_modules())
    if site not in modules:
        raise LatentError(f"{type(model).__name__} has no module {site!r}; an SAE site is one module path.")
    rows: list[Tensor] = []
    seen: list[Tensor] = []

    class Reached(Exception):
        """The site has run: the layers after it are not needed."""

    def hook(module, args, output):
        seen.append((output if isinstance(output, Tensor) else output[0]).detach().float())
        raise Reached

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    handle = modules[site].register_forward_hook(hook)
    try:
        for start in range(0, len(texts), batch_size):
            encoded = [tokenizer(t).input_ids[:max_tokens] for t in texts[start : start + batch_size]]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for i, e in enumerate(encoded):
                ids[i, : len(e)], attention[i, : len(e)] = torch.tensor(e), 1
            keep = attention.bool()
            keep[:, 0] = False
            seen.clear()
            with torch.no_grad(), contextlib.suppress(Reached):
                model(input_ids=ids.to(device), attention_mask=attention.to(device))
            rows.append(seen[0][keep.to(device)].cpu())
    finally:
        handle.remove()
    return torch.cat(rows)


def train_sae(
    data: Tensor,
    site: str,
    width: int,
    k: int,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    model: str = "",
    progress: bool = False,
) -> SAE:
    """Train a TopK SAE on site outputs ``data`` [N, d] (``site_outputs``): Adam on the squared error, unit-norm
    decoder rows, and an auxiliary loss that lets latents dead for 200 steps reconstruct the residual error
    (the AuxK loss of Gao et al., 2024). A tenth of the rows is held out; ``stats`` gives its fraction of
    variance explained and the share of latents that never fire on it."""
    if data.ndim != 2 or len(data) < 20:
        raise LatentError(f"An SAE trains on site outputs [N, d] with N >= 20; got shape {tuple(data.shape)}.")
    generator = torch.Generator().manual_seed(seed)
    data = data.float()[torch.randperm(len(data), generator=generator)]
    held = max(len(data) // 10, 1)
    test, train = data[:held], data[held:]
    sae = SAE(data.shape[1], width, k, site, model)
    decoder = torch.randn(width, data.shape[1], generator=generator)
    decoder /= decoder.norm(dim=1, keepdim=True)
    sae.W_dec.data.copy_(decoder)
    sae.W_enc.data.copy_(decoder)
    sae.b_dec.data.copy_(train.median(dim=0).values)
    sae.requires_grad_(True)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    scale = (train - train.mean(0)).pow(2).sum(-1).mean()
    idle = torch.zeros(width, dtype=torch.long)
    k_aux = min(data.shape[1] // 2, width)
    try:
        for step in range(steps):
            x = train[torch.randint(0, len(train), (batch_size,), generator=generator)]
            z = sae.encode(x)
            recon = sae.decode(z)
            loss = (recon - x).pow(2).sum(-1).mean() / scale
            fired = (z > 0).any(0)
            idle = torch.where(fired, 0, idle + 1)
            dead = idle > 200
            if dead.any():
                pre = F.linear(x - sae.b_dec, sae.W_enc, sae.b_enc).masked_fill(~dead, -math.inf)
                top = pre.topk(min(k_aux, int(dead.sum())), dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
                residual = (x - recon).detach()
                loss = loss + (F.linear(z_aux, sae.W_dec.t()) - residual).pow(2).sum(-1).mean() / scale / 32
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            if progress and step % 500 == 0:
                print(f"step {step}: normalised loss {loss.item():.4f}, dead {int(dead.sum())}/{width}", flush=True)
    finally:
        sae.requires_grad_(False)
    with torch.no_grad():
        z = sae.encode(test)
        fve = 1 - float((sae.decode(z) - test).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
        never = float((z > 0).sum(0).eq(0).float().mean())
    sae.stats = {"fve": fve, "dead_on_held_out": never, "tokens": len(data), "steps": steps}
    return sae


#: The bundled model's SAEs (``make sae``): the residual stream after these decoder layers.
BUNDLED_LAYERS = (14,)


def bundled_name(layer: int) -> str:
    """The cache name of the bundled model's SAE after decoder layer ``layer``."""
    return f"smollm2-135m-layer{layer}"


def main(argv: list[str] | None = None) -> None:
    """``make sae``: train the bundled model's SAEs on the labelled corpus and cache them; an SAE already cached
    is kept."""
    import argparse
    import os
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--layers", default=",".join(map(str, BUNDLED_LAYERS)), help="decoder layers, comma-separated")
    parser.add_argument("--width", type=int, default=1152, help="latents (default: 1152, twice the hidden size)")
    parser.add_argument("--k", type=int, default=16, help="latents kept per token (default: 16)")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps (default: 1500)")
    parser.add_argument("--batch-size", type=int, default=256, help="tokens per step (default: 256)")
    parser.add_argument("--force", action="store_true", help="train again even where an SAE is cached")
    args = parser.parse_args(argv)

    from ..loading import load_model
    from ..tasks.base import model_name
    from .corpus import labelled_corpus

    model, tokenizer = load_model()
    texts = [r.text for r in labelled_corpus()]
    for layer in (int(x) for x in args.layers.split(",")):
        folder = sae_folder(bundled_name(layer))
        if (folder / "sae.json").is_file() and not args.force:
            print(f"{folder} is cached; --force trains it again")
            continue
        started = time.perf_counter()
        data = site_outputs(model, tokenizer, texts, f"model.layers.{layer}")
        print(f"layer {layer}: {len(data)} tokens of site outputs in {time.perf_counter() - started:.0f} s", flush=True)
        sae = train_sae(
            data, f"model.layers.{layer}", args.width, args.k, args.steps, args.batch_size, model=model_name(model),
            progress=True,
        )  # fmt: skip
        sae.save(folder)
        print(f"saved {folder}: {sae.stats} ({time.perf_counter() - started:.0f} s)")
