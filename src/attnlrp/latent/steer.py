"""Steering with units: ``attnlrp.steer(model, {unit: strength}, mode=...)``, a reversible ``with`` block.

Inside the block each steered site's module gets an instance hook that changes the chosen units' activations
at every position; leaving the block removes the hooks, so the model computes exactly what it computed before
(no class is patched, and steering one model never touches another, nor a copy made inside the block). Modes:
``add`` adds the strength to the unit's activation, ``clamp`` sets the activation to it, ``scale`` multiplies
the activation by it (0 ablates the unit). Neurons and residual dimensions are changed where they are read; an
attention head's output vector is scaled (heads steer by ``scale`` only); an SAE latent moves the site's output
along its decoder direction, by (new - old activation) times that direction.

A model is steered by one block at a time, and an ``lrp`` block binds a steered model, not the other way
round: ``with steer(model, ...): with lrp(model): ...`` explains the steered model.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.binding import binding_of
from ..errors import LatentError, SteeringError
from ..results.base import Result
from ..tasks.base import model_name
from .sites import Site, SiteSpec, resolve_one

MODES = ("add", "clamp", "scale")

#: How many tokens a steered continuation generates, unless told (the command line's default too).
MAX_NEW_TOKENS = 20

#: Each module of a steered model -> the units its open block steers (our own bookkeeping; weak).
_STEERED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

Unit = tuple[SiteSpec, int]


def _changed(current: Tensor, values: Tensor, mode: str) -> Tensor:
    if mode == "add":
        return current + values
    if mode == "clamp":
        return values.expand_as(current)
    return current * values


def _hook(site: Site, index: Tensor, values: Tensor, mode: str):
    """The hook that steers ``index`` units of ``site`` to ``values`` ([n], or [rows, n] per batch row)."""
    rows = values.dim() == 2

    def shaped(x: Tensor) -> Tensor:  # values broadcast over [B, T, n]
        v = values.to(x)
        return v[:, None, :] if rows else v

    def steer_last(x: Tensor) -> Tensor:
        x = x.clone()
        if site.kind == "heads":
            heads = x.unflatten(-1, (site.width, -1))
            heads[..., index, :] = heads[..., index, :] * shaped(x).unsqueeze(-1)
            return heads.flatten(-2)
        x[..., index] = _changed(x[..., index], shaped(x), mode)
        return x

    def through_sae(h: Tensor) -> Tensor:
        sae = site.sae
        directions = sae.W_dec[index].to(h)  # [n, d]
        if mode == "add":
            delta = shaped(h).expand(*h.shape[:-1], len(index))
        else:
            z = sae.encode(h)[..., index]
            delta = _changed(z, shaped(h), mode) - z
        return h + delta @ directions

    owner = site.module
    if site.kind in ("neurons", "heads"):
        return owner.register_forward_pre_hook(_OwnHook(owner, lambda args: (steer_last(args[0]),) + tuple(args[1:])))
    change = through_sae if site.kind == "sae" else steer_last

    def post(output):
        if isinstance(output, Tensor):
            return change(output)
        return (change(output[0]),) + tuple(output[1:])

    return owner.register_forward_hook(_OwnHook(owner, post))


def _inert(*_: Any) -> None:
    """What a steering hook becomes in a copy of its module: nothing."""


class _OwnHook:
    """A module hook that steers its own module only (called with the last of the hook's arguments: the forward's
    inputs before it, its output after it). A shallow copy of the module shares the hook and leaves it unsteered;
    a deep copy (``copy.deepcopy`` inside the block) gets an inert hook, which holds neither the original module
    nor the steering values, so the copy computes unsteered, during the block and after it."""

    def __init__(self, owner: nn.Module, change):
        self.owner, self.change = owner, change

    def __call__(self, module: nn.Module, *arguments: Any) -> Any:
        return self.change(arguments[-1]) if module is self.owner else None

    def __deepcopy__(self, memo: dict) -> Any:
        return _inert


def _refuse_conflicts(model: nn.Module) -> None:
    if binding_of(model) is not None:
        raise SteeringError(
            f"{type(model).__name__} is bound by an attnlrp.lrp(...) block; steer first, then bind: "
            "with attnlrp.steer(model, ...): with attnlrp.lrp(model): ..."
        )
    held = next((_STEERED[m] for m in model.modules() if m in _STEERED), None)
    if held is not None:
        raise SteeringError(
            f"{type(model).__name__} is already steered ({held}); leave that block first, or steer all units in one "
            "block."
        )


@contextmanager
def steering(model: nn.Module, plan: Sequence[tuple[Site, Tensor, Tensor]], mode: str) -> Iterator[None]:
    """Steer per site: (site, unit indices [n], values [n] or [rows, n]) — the engine of ``steer`` (and of the
    per-row ablations of ``attnlrp.latent.faithfulness``)."""
    if mode not in MODES:
        raise LatentError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}.")
    _refuse_conflicts(model)
    for site, _, _ in plan:
        if site.kind == "heads" and mode != "scale":
            raise LatentError(f"Heads of {site.name} steer by mode='scale' (0 ablates a head), not {mode!r}.")
    described = ", ".join(f"{site.name}[{len(index)} units]" for site, index, _ in plan)
    handles = []
    try:
        for site, index, values in plan:
            handles.append(_hook(site, index, values, mode))
        for module in model.modules():
            _STEERED[module] = described
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in model.modules():
            if _STEERED.get(module) == described:
                del _STEERED[module]


def _real(value: Any) -> float | None:
    """A real number (Python's, numpy's, or a one-value torch tensor of a number dtype) as a float; else None
    (a bool is not a strength)."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex():
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _plan(model: nn.Module, units: Mapping[Unit, float]) -> list[tuple[Site, Tensor, Tensor]]:
    if not isinstance(units, Mapping) or not units:
        raise LatentError("steer takes a dict {(site, unit): strength} with at least one unit.")
    grouped: dict[str, tuple[Site, list[int], list[float]]] = {}
    seen: dict[tuple[str, int], Any] = {}
    for key, strength in units.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise LatentError(f"A unit is (site, index), e.g. ('model.layers.3.mlp.down_proj', 17), not {key!r}.")
        site = resolve_one(model, key[0])
        index = site.check_unit(key[1])
        if (site.name, index) in seen:
            raise LatentError(
                f"Unit {site.name}:{index} is given twice ({seen[site.name, index]!r} and {key!r}): give it once, "
                "with the sum of the strengths."
            )
        seen[site.name, index] = key
        value = _real(strength)
        if value is None or not math.isfinite(value):
            raise LatentError(f"The strength of {site.name}:{index} must be a finite number, not {strength!r}.")
        entry = grouped.setdefault(site.name, (site, [], []))
        entry[1].append(index)
        entry[2].append(value)
    return [(site, torch.tensor(index), torch.tensor(values)) for site, index, values in grouped.values()]


@contextmanager
def steer(model: nn.Module, units: Mapping[Unit, float], mode: str = "add") -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with each unit's activation changed by its strength (see the module's
    docstring for the modes); leaving it restores the model exactly.

    units: {(site, index): strength}; a site is a module path (``"model.layers.3.mlp.down_proj"``, or with
    ``@kind``) or an ``attnlrp.latent.SAE``. Raises SteeringError for a model already steered or bound by
    ``attnlrp.lrp``.
    """
    with steering(model, _plan(model, units), mode):
        yield model


# --- strength sweeps ---------------------------------------------------------------------------------------

#: Neutral text for the perplexity and KL columns of a sweep (no topic of the labelled corpus).
NEUTRAL = (
    "The meeting was moved to Thursday afternoon because two of the members could not attend on Monday.",
    "She opened the window, put the kettle on and read the letter twice before answering it.",
    "Most of the files were sorted by date, but a few older ones had been kept in a separate box.",
    "After a short break the group continued the discussion and agreed on a plan for the next month.",
)


def _left_padded(tokenizer, texts: Sequence[str], device) -> tuple[Tensor, Tensor]:
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t for t in texts):
        shown = f"one string, {texts[:40]!r}" if isinstance(texts, str) else repr(texts)[:80]
        raise LatentError(f"Prompts are a list of non-empty texts ([text] for one), not {shown}.")
    encoded = [tokenizer(t).input_ids for t in texts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :], mask[row, width - len(e) :] = torch.tensor(e), 1
    return ids.to(device), mask.to(device)


def padded_logits(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """The logits [B, T, V] of a left-padded batch (``_left_padded``), with each row's positions counted from its
    first real token where the model takes position ids (as ``attnlrp.tasks.token_batch`` does), so that a row
    gives what it gives alone, whatever the other rows, for models of absolute positions too."""
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(**inputs).logits


def _names_concept(text: str, words: Sequence[str]) -> bool:
    """Whether ``text`` holds one of the concept ``words`` as a whole word, in any case ("tar" is not in "guitar")."""
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE) for w in words)


def _concept_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first token of each concept word, spelled with and without a leading space and capitalised."""
    ids = set()
    for word in words:
        for spelling in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if encoded:
                ids.add(encoded[0])
    return sorted(ids)


def generate_steered(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    units: Mapping[Unit, float],
    mode: str = "add",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy continuations of ``prompts`` with ``units`` steered (an empty dict: unsteered)."""
    ids, mask = _left_padded(tokenizer, prompts, next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with steer(model, units, mode) if units else nullcontext(), torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class SteeringSweep(Result):
    """A strength sweep: per strength, the concept tokens' next-token probability after the prompts
    (``concept_prob``), the share of greedy continuations that name the concept (``concept_rate``), the KL
    divergence KL(steered ‖ unsteered) of next-token distributions over neutral text (``kl``) and the
    perplexity of that text (``perplexity``), and the continuations themselves."""

    units: list[list]
    mode: str
    concept: list[str]
    prompts: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""

    kind = "steering-sweep"

    def summary(self) -> str:
        strengths = ", ".join(f"{r['strength']:g}" for r in self.rows)
        return f"{len(self.units)} units, mode={self.mode}, concept {self.concept}, strengths {strengths}"

    def title(self) -> str:
        return f"Steering sweep towards {', '.join(self.concept)}"

    def table(self) -> str:
        """The sweep as a markdown table."""
        lines = [
            "| strength | concept prob. | concept rate | KL to unsteered | perplexity | a continuation (one naming the concept, if any) |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            naming = [g for g in r["generations"] if _names_concept(g, self.concept)]
            text = (naming or r["generations"])[0].replace("\n", " ").replace("|", "\\|").strip()
            lines.append(
                f"| {r['strength']:g} | {r['concept_prob']:.4f} | {r['concept_rate']:.2f} | {r['kl']:.3f} | "
                f"{r['perplexity']:.2f} | {text} |"
            )
        return "\n".join(lines)

    def html_view(self) -> str:
        import html

        from ..render.html import style

        cells = "".join(
            f"<tr><td>{r['strength']:g}</td><td>{r['concept_prob']:.4f}</td><td>{r['concept_rate']:.2f}</td>"
            f"<td>{r['kl']:.3f}</td><td>{r['perplexity']:.2f}</td><td>"
            + "<br>".join(html.escape(g) for g in r["generations"])
            + "</td></tr>"
            for r in self.rows
        )
        head = "<tr><th>strength</th><th>concept prob.</th><th>concept rate</th><th>KL</th><th>perplexity</th><th>continuations</th></tr>"
        return (
            f'<div class="attnlrp-view"><style>{style()} .attnlrp-view td{{vertical-align:top;padding:3px 8px;'
            f"border-bottom:1px solid #eee}}</style><h1>{html.escape(self.title())}</h1>"
            f'<div class="meta">{html.escape(self.summary())}</div><table>{head}{cells}</table></div>'
        )


def _log_probs(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    with torch.no_grad():
        return F.log_softmax(padded_logits(model, ids, mask).float(), dim=-1)


def sweep(
    model: nn.Module,
    tokenizer,
    units: Sequence[Unit] | Mapping[Unit, float],
    strengths: Sequence[float],
    concept: Sequence[str],
    prompts: Sequence[str],
    neutral: Sequence[str] = NEUTRAL,
    mode: str = "add",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> SteeringSweep:
    """Steer ``units`` at each strength (a dict gives each unit a weight that multiplies the strength) and
    measure where quality breaks: the concept's probability and rate in greedy continuations of ``prompts``,
    against the KL to the unsteered model and the perplexity on ``neutral`` text."""
    weights = dict(units) if isinstance(units, Mapping) else dict.fromkeys(units, 1.0)
    if not concept:
        raise LatentError("A sweep needs concept words (the tokens steering should bring up).")
    device = next(model.parameters()).device
    concept_ids = torch.tensor(_concept_ids(tokenizer, concept), device=device)
    prompt_ids, prompt_mask = _left_padded(tokenizer, prompts, device)
    ids, mask = _left_padded(tokenizer, neutral, device)
    real = (mask[:, :-1] * mask[:, 1:]).bool()  # a real token predicting a real one: no prediction from a pad
    base = _log_probs(model, ids, mask)
    rows = []
    for strength in strengths:
        plan = {unit: weight * strength for unit, weight in weights.items()}
        with steer(model, plan, mode):
            last = _log_probs(model, prompt_ids, prompt_mask)[:, -1]
            steered = _log_probs(model, ids, mask)
        generations = generate_steered(model, tokenizer, prompts, plan, mode, max_new_tokens)
        kl = (steered.exp() * (steered - base)).sum(-1)[:, :-1][real]
        nll = -steered[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)[real]
        rows.append(
            {
                "strength": float(strength),
                "concept_prob": float(last.exp()[:, concept_ids].sum(-1).mean()),
                "concept_rate": sum(_names_concept(g, concept) for g in generations) / len(generations),
                "kl": float(kl.mean()),
                "perplexity": float(nll.mean().exp()),
                "generations": generations,
            }
        )
    return SteeringSweep(
        units=[[resolve_one(model, site).name, int(index)] for site, index in weights],
        mode=mode,
        concept=list(concept),
        prompts=list(prompts),
        rows=rows,
        model=model_name(model),
    )
