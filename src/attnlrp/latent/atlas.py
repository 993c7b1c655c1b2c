"""``FeatureAtlas``: for every unit of its sites, the top-k contexts by activation and by relevance, kept
streaming, with activation and relevance statistics and an activation histogram.

Memory is bounded by top-k: each site holds [units, k] scores and context ids and [units, k, max_tokens]
per-token values, and the context table keeps only contexts that some top-k list still names. Ties are
broken by the smaller context id, so the lists don't depend on the order contexts arrive in, and ``merge``
gives what one pass over both corpora gives: the same lists, and sums equal up to float32 rounding.

Saved as ``atlas.json`` (settings, contexts, corpus parts) and ``tensors.safetensors``: no pickle.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import LatentError
from ..tasks.base import model_name
from ..tasks.model_identity import same_weights, weight_sample
from .labels import Label, Labeller, label_of
from .sites import Site, unit_index

if TYPE_CHECKING:
    from .cards import FeatureCard

FORMAT = "attnlrp-atlas"
VERSION = 2  # 2: the histogram's middle bin is |activation| < 2^-9 (was: exact zeros)

#: Histogram bins, the same for every unit (so that histograms add up exactly): one bin around zero for
#: |activation| < 2^-9, and on each side one bin per octave from 2^-9 up, the outermost open from 2^10.
_OCTAVES = range(-9, 11)
HISTOGRAM_EDGES = torch.tensor(
    [-(2.0**e) for e in reversed(_OCTAVES)] + [2.0**e for e in _OCTAVES], dtype=torch.float64
)
BINS = 2 * len(_OCTAVES) + 1

#: Per-unit tensors of a site: (name, dtype, extra shape after [units]) — "k" and "L" stand for top_k and
#: max_tokens. The top-k lists are slots in no particular order (``ranked`` sorts them); empty slots have score
#: -inf and context id -1.
FIELDS: dict[str, tuple[torch.dtype, tuple[str, ...]]] = {
    "act_score": (torch.float32, ("k",)),
    "act_context": (torch.int64, ("k",)),
    "act_tokens": (torch.float32, ("k", "L")),
    "rel_score": (torch.float32, ("k",)),
    "rel_context": (torch.int64, ("k",)),
    "rel_tokens": (torch.float32, ("k", "L")),
    "rel_tokens_act": (torch.float32, ("k", "L")),
    "act_sum": (torch.float64, ()),
    "act_squares": (torch.float64, ()),
    "act_max": (torch.float32, ()),
    "act_min": (torch.float32, ()),
    "active": (torch.int64, ()),
    "rel_sum": (torch.float64, ()),
    "rel_abs": (torch.float64, ()),
    "rel_max": (torch.float32, ()),
    "rel_min": (torch.float32, ()),
    "histogram": (torch.int64, ("bins",)),
}
_EMPTY = {"act_score": -math.inf, "rel_score": -math.inf, "act_context": -1, "rel_context": -1,
          "act_max": -math.inf, "rel_max": -math.inf, "act_min": math.inf, "rel_min": math.inf}  # fmt: skip
#: Each mode's top-k list: its score, context and per-token tensors.
MODES = {"act": ("act_tokens",), "rel": ("rel_tokens", "rel_tokens_act")}


def histogram_bins(x: Tensor) -> Tensor:
    """The bin of each float32 value (``HISTOGRAM_EDGES``; int32), read from its exponent and sign bits: a float
    with biased exponent E lies in [2^(E-127), 2^(E-126)), so the octave is E clamped and shifted."""
    bits = x.float().contiguous().view(torch.int32)
    smallest = 127 + _OCTAVES.start - 1  # this exponent and those below: the middle bin
    octave = (bits >> 23).bitwise_and_(0xFF).clamp_(smallest, smallest + len(_OCTAVES)).sub_(smallest)
    return (bits >> 31).bitwise_or_(1).mul_(octave).add_(len(_OCTAVES))  # sign (-1 or 1) x octave, centred


def _rank_key(score: Tensor, context: Tensor) -> Tensor:
    """A 64-bit key per slot, larger for a better slot: score descending, then context id ascending; empty slots
    (score -inf, context -1) below every filled one. The score's float32 bits, made order-preserving, fill the
    high half; the context id is subtracted."""
    bits = (score.float() + 0.0).contiguous().view(torch.int32)  # + 0.0: -0.0 ties with 0.0
    return (torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long() << 32) - context


def _order(score: Tensor, context: Tensor) -> Tensor:
    """Column order per row, best slot first (``_rank_key``)."""
    return _rank_key(score, context).argsort(dim=1, descending=True, stable=True)


def _admit(score: Tensor, context: Tensor, new_score: Tensor, new_context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Fold candidates [U, n] into the top-k slots [U, k] (in place): the k best of both stay. Returns the
    (units, slots, candidates) where a candidate took a slot, so that the caller copies its per-token values.
    Only units where some candidate reaches their worst kept score are looked at."""
    k = score.shape[1]
    hopeful = (new_score >= score.amin(1, keepdim=True)).any(1).nonzero().squeeze(1)
    key = _rank_key(
        torch.cat([score[hopeful], new_score[hopeful]], 1), torch.cat([context[hopeful], new_context[hopeful]], 1)
    )
    chosen = torch.zeros_like(key, dtype=torch.bool).scatter_(1, key.topk(k, dim=1, sorted=False).indices, True)
    # Per unit, as many old slots lost their place as candidates won one: pair them in order (nonzero is row-major).
    rows, slots = (~chosen[:, :k]).nonzero().unbind(1)
    candidates = chosen[:, k:].nonzero()[:, 1]
    rows = hopeful[rows]
    score[rows, slots] = new_score[rows, candidates]
    context[rows, slots] = new_context[rows, candidates]
    return rows, slots, candidates


@dataclass
class SiteState:
    """The streaming state of one site: the tensors of ``FIELDS``, and the output tokens of its units once read."""

    name: str
    path: str
    kind: str
    width: int
    tensors: dict[str, Tensor]
    promoted: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str, path: str, kind: str, width: int, k: int, length: int) -> SiteState:
        sizes = {"k": k, "L": length, "bins": BINS}
        tensors = {}
        for key, (dtype, extra) in FIELDS.items():
            shape = (width, *(sizes[e] for e in extra))
            tensors[key] = torch.full(shape, _EMPTY.get(key, 0), dtype=dtype)
        return cls(name, path, kind, width, tensors)

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "width": self.width}

    def add(self, activation: Tensor, relevance: Tensor, mask: Tensor, contexts: Tensor) -> None:
        """Fold in one batch: activation and relevance [B, T, U], mask [B, T] of real tokens, context ids [B].
        The token statistics read the real tokens only; relevance at padding positions is zero (they come after a
        context's tokens and don't reach its prediction), so it is summed without the mask. Each batch's sums
        are taken in float32 and accumulated in float64."""
        t = self.tensors
        activation, relevance = activation.float(), relevance.float()
        lengths = mask.sum(1)
        real = activation.flatten(0, 1).index_select(0, mask.flatten().nonzero().squeeze(1))  # [N, U], by context
        t["act_sum"] += real.sum(0).double()
        t["act_squares"] += torch.linalg.vecdot(real, real, dim=0).double()
        peak = torch.stack([part.amax(0) for part in real.split(lengths.tolist())])  # [B, U]
        t["act_max"] = torch.maximum(t["act_max"], peak.amax(0))
        t["act_min"] = torch.minimum(t["act_min"], real.amin(0))
        bins = histogram_bins(real).add_(torch.arange(self.width, dtype=torch.int32) * BINS)
        counts = torch.bincount(bins.view(-1), minlength=self.width * BINS).view(self.width, BINS)
        t["histogram"] += counts
        t["active"] += counts[:, len(_OCTAVES) + 1 :].sum(1)  # the bins above the middle one
        per_context = relevance.sum(1)  # [B, U]
        t["rel_sum"] += per_context.sum(0).double()
        t["rel_abs"] += per_context.abs().sum(0).double()
        t["rel_max"] = torch.maximum(t["rel_max"], per_context.amax(0))
        t["rel_min"] = torch.minimum(t["rel_min"], per_context.amin(0))
        ids = contexts.unsqueeze(0).expand(self.width, -1)
        length = t["act_tokens"].shape[-1]
        width = min(activation.shape[1], length)
        within = mask[:, :width].to(activation.dtype)
        sources = {"act_tokens": activation, "rel_tokens": relevance, "rel_tokens_act": activation}
        for mode, scores in (("act", peak.t()), ("rel", per_context.t())):
            units, slots, rows = _admit(t[f"{mode}_score"], t[f"{mode}_context"], scores, ids)
            for key in MODES[mode]:
                values = sources[key][rows, :width, units] * within[rows]  # zero at padding
                t[key][units, slots] = torch.nn.functional.pad(values, (0, length - width))

    def merge(self, other: SiteState, shift: Callable[[Tensor], Tensor]) -> SiteState:
        """This state and ``other``'s (whose context ids ``shift`` maps into this atlas's) as one."""
        a, b = self.tensors, other.tensors
        out = {key: a[key] + b[key] for key in ("act_sum", "act_squares", "active", "rel_sum", "rel_abs", "histogram")}
        for key in ("act_max", "rel_max"):
            out[key] = torch.maximum(a[key], b[key])
        for key in ("act_min", "rel_min"):
            out[key] = torch.minimum(a[key], b[key])
        for mode, keys in MODES.items():
            score, context = a[f"{mode}_score"].clone(), a[f"{mode}_context"].clone()
            units, slots, rows = _admit(score, context, b[f"{mode}_score"], shift(b[f"{mode}_context"]))
            out[f"{mode}_score"], out[f"{mode}_context"] = score, context
            for key in keys:
                out[key] = a[key].clone()
                out[key][units, slots] = b[key][units, rows]
        promoted = {**other.promoted, **self.promoted}  # output readings depend on the model only: either's do
        return SiteState(self.name, self.path, self.kind, self.width, out, promoted)

    def ranked(self) -> dict[str, Tensor]:
        """The tensors with every top-k list in rank order (score descending, then context id)."""
        out = dict(self.tensors)
        for mode, keys in MODES.items():
            order = _order(out[f"{mode}_score"], out[f"{mode}_context"])
            for key in (f"{mode}_score", f"{mode}_context", *keys):
                index = order if out[key].dim() == 2 else order.unsqueeze(-1).expand_as(out[key])
                out[key] = out[key].gather(1, index)
        return out


@dataclass
class Part:
    """A corpus the atlas covers, at ``offset`` among the atlas's context ids: its digest and size (known once a
    pass over it ends), and which shards (ranks of ``world``, taking batches of ``batch`` contexts) of it were
    collected."""

    digest: str
    size: int
    world: int
    ranks: list[int]
    offset: int = 0
    batch: int = 0  # 0: one shard, the whole corpus


class FeatureAtlas:
    """Top contexts and statistics of every unit of some sites, collected by ``attnlrp.latent.collect``.

    ``sites`` (names), ``card(site, unit)``, ``label(site, unit)``, ``top(site, unit, mode)``, ``stats(site,
    unit)``, ``histogram(site, unit)``, ``merge(other)``, ``save(folder)`` / ``FeatureAtlas.load(folder)`` and
    ``to_html(path)``. The parts that run the model (conditional heatmaps, ``read_outputs``) need the atlas bound to its model:
    ``collect`` returns it bound, and ``load(folder, model=..., tokenizer=...)`` binds it again.
    """

    def __init__(self, settings: dict[str, Any], states: list[SiteState]):
        self.settings = settings
        self.states = {s.name: s for s in states}
        self.contexts: dict[int, dict[str, Any]] = {}
        self.parts: list[Part] = []
        self.tokens = 0
        self.seen = 0  # contexts folded in
        self.position = 0  # corpus records consumed (resume point)
        self.prefix_digest = ""
        self.topics: dict[str, int] = {}
        self.vocabulary: dict[int, str] = {}  # display strings of the tokens of contexts and of output readings
        self.finished = False  # every pass over its corpora (or shards of them) ran to the end
        self.model: nn.Module | None = None
        self.tokenizer = None
        self.bound_sites: dict[str, Site] = {}

    # --- building ---------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, settings: dict[str, Any], sites: Sequence[Site]) -> FeatureAtlas:
        k, length = settings["top_k"], settings["max_tokens"]
        return cls(settings, [SiteState.empty(s.name, s.path, s.kind, s.width, k, length) for s in sites])

    def add(
        self,
        contexts: Tensor,
        mask: Tensor,
        activation: dict[str, Tensor],
        relevance: dict[str, Tensor],
        topics: Sequence[str | None],
        describe: Callable[[int], dict[str, Any]],
    ) -> None:
        """Fold in one batch of contexts (ids [B], real-token mask [B, T], their topics); ``describe(row)`` gives
        the context entry of a row (ids, topic, target) with its display ``tokens``, asked only for rows that enter
        a top-k list. Display strings are kept once per token id, in ``vocabulary``."""
        for name, state in self.states.items():
            if name not in relevance:
                raise LatentError(f"No relevance reached site {name}: the explained value doesn't depend on it.")
            state.add(activation[name], relevance[name], mask, contexts)
        self.tokens += int(mask.sum())
        self.seen += len(contexts)
        for topic in topics:
            if topic is not None:
                self.topics[topic] = self.topics.get(topic, 0) + 1
        named = self._prune(int(contexts.max()))
        for row in named[contexts + 1].nonzero().squeeze(1).tolist():
            entry = describe(row)
            for token, text in zip(entry["ids"], entry.pop("tokens")):
                self.vocabulary.setdefault(token, text)
            self.contexts[int(contexts[row])] = entry

    def _prune(self, largest: int = -1) -> Tensor:
        """Keep only the contexts some top-k list names. Returns which ids are named, as a mask over id + 1 (empty
        slots, id -1, land on index 0) that reaches at least ``largest``."""
        ids = [s.tensors[f"{mode}_context"] for s in self.states.values() for mode in MODES]
        largest = max(largest, max(self.contexts, default=-1), *(int(i.max()) for i in ids))
        named = torch.zeros(largest + 2, dtype=torch.bool)
        for i in ids:
            named[i.flatten() + 1] = True
        named[0] = False
        kept = torch.tensor(list(self.contexts), dtype=torch.int64)
        if not bool(named[kept + 1].all()):
            keep = set(kept[named[kept + 1]].tolist())
            self.contexts = {c: entry for c, entry in self.contexts.items() if c in keep}
        return named

    # --- reading ----------------------------------------------------------------------------------------

    @property
    def sites(self) -> list[str]:
        return list(self.states)

    def state(self, site: str) -> SiteState:
        """The state of the site named ``site``, or a LatentError listing the atlas's sites."""
        if site not in self.states:
            import difflib

            close = difflib.get_close_matches(site, list(self.states), n=3, cutoff=0.5)
            raise LatentError(
                f"The atlas has no site {site!r}"
                + (f"; close matches: {', '.join(close)}." if close else f"; its sites are {', '.join(self.states)}.")
            )
        return self.states[site]

    def check(self, site: str, unit: int) -> tuple[SiteState, int]:
        """The site's state and the unit as an int, or a LatentError naming what is wrong."""
        state = self.state(site)
        return state, unit_index(unit, site, state.kind, state.width)

    def top(self, site: str, unit: int, mode: str = "activation", count: int | None = None) -> list[dict[str, Any]]:
        """The unit's top contexts by ``mode`` ("activation" or "relevance"), best first: each with its context
        entry (tokens, topic, target), ``score`` and per-token ``activations`` (and ``relevance``)."""
        if mode not in ("activation", "relevance"):
            raise LatentError(f"mode must be 'activation' or 'relevance', not {mode!r}.")
        state, unit = self.check(site, unit)
        t = state.tensors
        prefix = "act" if mode == "activation" else "rel"
        out = []
        for slot in _order(t[f"{prefix}_score"][unit : unit + 1], t[f"{prefix}_context"][unit : unit + 1])[0, :count]:
            context = int(t[f"{prefix}_context"][unit, slot])
            if context < 0:
                break
            entry = self.contexts[context]
            n = min(len(entry["ids"]), self.settings["max_tokens"])
            values = t["act_tokens" if mode == "activation" else "rel_tokens_act"][unit, slot, :n]
            item = {
                **entry,
                "ids": list(entry["ids"]),
                "context": context,
                "score": float(t[f"{prefix}_score"][unit, slot]),
            }
            item["tokens"] = [self.vocabulary.get(i, str(i)) for i in entry["ids"][:n]]
            item["activations"] = values.tolist()
            if mode == "relevance":
                item["relevance"] = t["rel_tokens"][unit, slot, :n].tolist()
            out.append(item)
        return out

    def stats(self, site: str, unit: int) -> dict[str, float]:
        """Activation statistics over every real token, and relevance statistics over every context."""
        state, unit = self.check(site, unit)
        t = {key: float(v[unit]) for key, v in state.tensors.items() if v.dim() == 1}
        n, m = max(self.tokens, 1), max(self.seen, 1)
        mean = t["act_sum"] / n
        return {
            "tokens": self.tokens,
            "contexts": self.seen,
            "activation_mean": mean,
            "activation_std": math.sqrt(max(t["act_squares"] / n - mean * mean, 0.0)),
            "activation_max": t["act_max"],
            "activation_min": t["act_min"],
            "active_share": t["active"] / n,
            "relevance_mean": t["rel_sum"] / m,
            "relevance_abs_mean": t["rel_abs"] / m,
            "relevance_max": t["rel_max"],
            "relevance_min": t["rel_min"],
        }

    def histogram(self, site: str, unit: int) -> tuple[list[float], list[int]]:
        """(bin edges, counts) of the unit's activations over every real token: one bin per octave of |activation|
        on each side of a bin around zero; the first and last bins are open."""
        state, unit = self.check(site, unit)
        return HISTOGRAM_EDGES.tolist(), state.tensors["histogram"][unit].tolist()

    def relevance_mass(self, site: str) -> Tensor:
        """Mean |relevance| per context of each unit of a site [U]: how much predictions use it."""
        return self.state(site).tensors["rel_abs"] / max(self.seen, 1)

    def label(self, site: str, unit: int, labeller: Labeller | None = None) -> Label:
        """The unit's label and purity, from its top contexts by activation (see ``attnlrp.latent.labels``)."""
        return label_of(self.top(site, unit, "activation"), self.topics, labeller)

    def card(
        self, site: str, unit: int, labeller: Labeller | None = None, contexts: int = 8, conditional: int = 3
    ) -> FeatureCard:
        """Everything about one unit: label, top ``contexts`` contexts in both modes, histogram, statistics,
        promoted and suppressed tokens, and (when the atlas is bound to its model) conditional heatmaps of its
        ``conditional`` top relevance contexts."""
        from .cards import build_card

        return build_card(self, site, unit, labeller, contexts, conditional)

    def to_html(
        self,
        path: str | Path,
        sites: str | Sequence[str] | None = None,
        labeller: Labeller | None = None,
        contexts: int = 8,
        conditional: int = 0,
    ) -> Path:
        """One self-contained, searchable page with the card of every unit of the atlas (or of ``sites``: a name or
        a list of names); ``conditional`` heatmaps per card run the model, so they are off by default."""
        from .page import write_atlas_page

        sites = [sites] if isinstance(sites, str) else sites
        if self.model is not None:
            self.read_outputs(sites)
        cards = [
            self.card(site, unit, labeller, contexts, conditional)
            for site in (sites or self.sites)
            for unit in range(self.state(site).width)
        ]
        title = f"Feature atlas of {self.settings['model']}"
        meta = (
            f"{len(cards)} units of {len(sites or self.sites)} sites · {self.seen} contexts, {self.tokens} tokens · "
            f"relevance: {self.settings['method']}"
        )
        return write_atlas_page(path, cards, title, meta)

    def read_outputs(self, sites: Sequence[str] | None = None) -> FeatureAtlas:
        """Read the promoted and suppressed output tokens of every unit of ``sites`` (default: all) through the
        unembedding, and keep them (``save`` writes them): needs the atlas bound to its model; a whole site
        costs one [units, hidden] x [hidden, vocabulary] product."""
        from .directions import promoted_tokens

        if self.model is None:
            raise LatentError(
                "Output tokens are read through the model: bind the atlas (FeatureAtlas.load(folder, model=..., tokenizer=...))."
            )
        for name in sites or self.sites:
            state = self.state(name)
            if not state.promoted:
                state.promoted = promoted_tokens(self.model, self.bound_sites[name])
                ids = {
                    i
                    for key in ("up_ids", "down_ids")
                    for i in state.promoted.get(key, torch.empty(0)).reshape(-1).tolist()
                }
                self.vocabulary.update({i: self.tokenizer.decode([i]) for i in sorted(ids - self.vocabulary.keys())})
        return self

    @property
    def missing_shards(self) -> dict[str, list[int]]:
        """Per corpus the atlas covers (by its digest's start), the shard ranks not merged in yet."""
        missing = {p.digest[:12]: sorted(set(range(p.world)) - set(p.ranks)) for p in self.parts}
        return {digest: ranks for digest, ranks in missing.items() if ranks}

    @property
    def complete(self) -> bool:
        """Whether the atlas covers its corpora whole: every pass finished, and every shard of a sharded run
        merged in (one shard, or a merge of some, is not complete)."""
        return self.finished and not self.missing_shards

    def _status(self) -> str:
        if not self.finished:
            return ", unfinished"
        missing = "; ".join(f"ranks {r} of corpus {d}" for d, r in self.missing_shards.items())
        return f", shards missing: {missing}" if missing else ""

    # --- combining --------------------------------------------------------------------------------------

    def merge(self, other: FeatureAtlas) -> FeatureAtlas:
        """This atlas and ``other`` as one: other shards of the same corpus join it; another corpus is appended
        (its context ids follow this atlas's), as one pass over both corpora, one after the other, would."""
        for atlas in (self, other):
            if not atlas.finished:
                raise LatentError("Only finished atlases merge: let collect finish (or resume it) first.")
        mine = {k: v for k, v in self.settings.items() if k != "shard"}
        theirs = {k: v for k, v in other.settings.items() if k != "shard"}
        if mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise LatentError(
                f"These atlases were collected with other settings ({', '.join(differ)}); they can't merge."
            )
        parts = [Part(**vars(p)) for p in self.parts]
        moves: list[tuple[int, int, int]] = []  # (start, end, delta) of other's context ids
        for p in other.parts:
            same = next((q for q in parts if q.digest == p.digest and q.size == p.size), None)
            if same is not None:
                if (same.world, same.batch) != (p.world, p.batch):
                    raise LatentError(
                        f"These atlases hold shards of the same corpus from runs of {same.world} and {p.world} "
                        f"processes, {same.batch} and {p.batch} contexts per batch: merge the shards of one run (the "
                        "same world size and --batch-size)."
                    )
                if set(same.ranks) & set(p.ranks):
                    raise LatentError(
                        f"Both atlases hold shards {sorted(set(same.ranks) & set(p.ranks))} of the same corpus: "
                        "merge disjoint shards of one run."
                    )
                same.ranks = sorted(same.ranks + p.ranks)
                moves.append((p.offset, p.offset + p.size, same.offset - p.offset))
            else:
                offset = sum(q.size for q in parts)
                parts.append(Part(p.digest, p.size, p.world, list(p.ranks), offset, p.batch))
                moves.append((p.offset, p.offset + p.size, offset - p.offset))

        def shift(ids: Tensor) -> Tensor:
            out = ids.clone()
            for start, end, delta in moves:
                out[(ids >= start) & (ids < end)] += delta
            return out

        merged = FeatureAtlas(self.settings, [s.merge(other.states[n], shift) for n, s in self.states.items()])
        merged.parts = parts
        merged.contexts = dict(self.contexts)
        for context, entry in other.contexts.items():
            merged.contexts[int(shift(torch.tensor([context]))[0])] = entry
        merged._prune()
        merged.tokens, merged.seen = self.tokens + other.tokens, self.seen + other.seen
        merged.topics = {t: self.topics.get(t, 0) + other.topics.get(t, 0) for t in {**self.topics, **other.topics}}
        merged.vocabulary = {**self.vocabulary, **other.vocabulary}
        if len(parts) == 1:  # shards of one corpus: the corpus the atlas covers, as a one-process pass would say
            merged.position, merged.prefix_digest = self.position, self.prefix_digest
        merged.finished = True
        merged.model, merged.tokenizer, merged.bound_sites = self.model, self.tokenizer, self.bound_sites
        return merged

    # --- saving -----------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``atlas.json`` and ``tensors.safetensors`` into ``folder`` (each replaced atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}|{key}": v.contiguous() for name, s in self.states.items() for key, v in s.tensors.items()}
        tensors.update(
            {
                f"{name}|promoted_{key}": v.contiguous()
                for name, s in self.states.items()
                for key, v in s.promoted.items()
            }
        )
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "settings": self.settings,
            "sites": [s.meta() for s in self.states.values()],
            "parts": [vars(p) for p in self.parts],
            "tokens": self.tokens,
            "seen": self.seen,
            "position": self.position,
            "prefix_digest": self.prefix_digest,
            "topics": self.topics,
            "finished": self.finished,
            "contexts": {str(c): {**entry, "ids": list(entry["ids"])} for c, entry in self.contexts.items()},
            "vocabulary": {str(i): text for i, text in self.vocabulary.items()},
        }
        staged = folder / "tensors.safetensors.tmp"
        save_file(tensors, staged)
        os.replace(staged, folder / "tensors.safetensors")
        staged = folder / "atlas.json.tmp"
        staged.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        os.replace(staged, folder / "atlas.json")
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, model: nn.Module | None = None, tokenizer=None, saes: Sequence = ()
    ) -> FeatureAtlas:
        """An atlas written by ``save``; with ``model`` and ``tokenizer`` it is bound to them (SAE sites need their
        SAEs: given in ``saes``, or reloaded from the folder they were loaded from)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / "atlas.json").read_text(encoding="utf-8"))
            tensors = load_file(folder / "tensors.safetensors")
        except (OSError, json.JSONDecodeError) as error:
            raise LatentError(f"{folder} holds no readable atlas (atlas.json, tensors.safetensors): {error}") from error
        if meta.get("format") != FORMAT:
            raise LatentError(f"{folder}/atlas.json is not an attnlrp atlas (found {meta.get('format')!r}).")
        if meta.get("version", 0) != VERSION:
            raise LatentError(
                f"{folder} holds an atlas of version {meta.get('version', 0)}, this attnlrp reads version {VERSION} "
                "(its histograms have other bins): collect the atlas again with this version."
            )
        states = []
        for site in meta["sites"]:
            prefix = site["name"] + "|"
            own = {key[len(prefix) :]: v for key, v in tensors.items() if key.startswith(prefix)}
            promoted = {key[len("promoted_") :]: v for key, v in own.items() if key.startswith("promoted_")}
            plain = {key: v for key, v in own.items() if not key.startswith("promoted_")}
            states.append(SiteState(site["name"], site["path"], site["kind"], site["width"], plain, promoted))
        atlas = cls(meta["settings"], states)
        atlas.parts = [Part(**p) for p in meta["parts"]]
        atlas.contexts = {int(c): {**entry, "ids": array("i", entry["ids"])} for c, entry in meta["contexts"].items()}
        atlas.tokens, atlas.seen, atlas.position = meta["tokens"], meta["seen"], meta["position"]
        atlas.prefix_digest, atlas.topics = meta["prefix_digest"], meta["topics"]
        atlas.finished = meta.get("finished", meta.get("complete"))  # "complete": atlases saved before shards counted
        atlas.vocabulary = {int(i): text for i, text in meta["vocabulary"].items()}
        if model is not None:
            atlas.bind(model, tokenizer, saes)
        return atlas

    def collected_on(self, model: nn.Module) -> bool:
        """Whether ``model`` is the one the atlas was collected on: by a sample of its weights (under any name, in
        any dtype), or by name (wherever its folder is) where there is none to compare."""
        same = same_weights(self.settings.get("weights", {}), weight_sample(model))
        return Path(self.settings["model"]).name == Path(model_name(model)).name if same is None else same

    def check_sae(self, sae: nn.Module) -> None:
        """A LatentError where ``sae`` is not the SAE the atlas's site of its name was collected with (by a
        sample of its weights, in any dtype): its latents are other units."""
        sample = self.settings.get("sae_weights", {}).get(sae.name)
        if sample is not None and same_weights(sample, weight_sample(sae)) is False:
            raise LatentError(
                f"The atlas's site {sae.name} was collected with another SAE (its weights differ): its labels name "
                "other latents; give the SAE it was collected with, or collect an atlas with this one."
            )

    def bind(self, model: nn.Module, tokenizer, saes: Sequence = ()) -> FeatureAtlas:
        """Bind the atlas to its model (and the SAEs of its SAE sites), for the parts that run the model. Another
        model (``collected_on``) is refused, as are another SAE (``check_sae``) and a site of another width."""
        from .sae import load_sae
        from .sites import resolve, sae_site

        given_name = model_name(model)
        if not self.collected_on(model):
            raise LatentError(
                f"This atlas was collected on {self.settings['model']}, and {given_name} is another model (its name "
                "or weights differ): bind it to that model, or collect an atlas on this one."
            )
        given = {sae.name: sae for sae in saes}
        sites = {}
        for name, state in self.states.items():
            if state.kind == "sae":
                sae = given.get(name) or (
                    load_sae(self.settings["saes"][name]) if self.settings["saes"].get(name) else None
                )
                if sae is None:
                    raise LatentError(f"Site {name} is an SAE's: give it, FeatureAtlas.load(..., saes=[sae]).")
                self.check_sae(sae)
                sites[name] = sae_site(model, sae)
            else:
                sites[name] = resolve(model, f"{state.path}@{state.kind}")[0]
            if sites[name].width != state.width:
                raise LatentError(
                    f"Site {name} has {sites[name].width} units in {given_name}, but {state.width} in the atlas: "
                    "bind the atlas to the model it was collected on."
                )
        self.model, self.tokenizer, self.bound_sites = model, tokenizer, sites
        return self

    def __repr__(self) -> str:
        units = sum(s.width for s in self.states.values())
        return (
            f"FeatureAtlas({len(self.states)} sites, {units} units, {self.seen} contexts, {self.tokens} tokens, "
            f"top_k={self.settings['top_k']}{self._status()})"
        )


def merge_folders(folders: Sequence[Path], output: str | Path) -> Path:
    """The atlases saved in ``folders`` (the shards of one corpus, or atlases of several) merged and saved in
    ``output``."""
    merged = FeatureAtlas.load(folders[0])
    for folder in folders[1:]:
        merged = merged.merge(FeatureAtlas.load(folder))
    return merged.save(output)
