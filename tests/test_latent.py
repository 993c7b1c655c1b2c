"""attnlrp.latent on a tiny random LLaMA (float64, no biases, the real tokenizer): sites, collect and the atlas,
labels and cards, explain(latent=...), SAEs, steering, knowledge units, ablation faithfulness, the corpus."""

from __future__ import annotations

import copy
import inspect
import itertools
import json

import pytest
import torch

import attnlrp
from attnlrp.errors import LatentError, MethodError, SteeringError
from attnlrp.latent import (
    SAE,
    FeatureAtlas,
    ablation_curves,
    collect,
    knowledge_units,
    labelled_corpus,
    load_sae,
    read_corpus,
    resolve,
    site_outputs,
    steer,
    sweep,
    train_sae,
    write_corpus,
)
from attnlrp.latent.atlas import BINS, HISTOGRAM_EDGES, histogram_bins
from attnlrp.latent.corpus import TOPICS
from attnlrp.latent.labels import label_of
from attnlrp.latent.readout import site_totals
from attnlrp.latent.sites import Site, SiteRecorder
from attnlrp.latent.steer import _names_concept
from attnlrp.tasks.base import model_name

NEURONS = "model.layers.*.mlp.down_proj"
SITE = "model.layers.1.mlp.down_proj"


def _corpus(n: int, seed: int = 0) -> list[dict]:
    return [{"text": r.text, "topic": r.topic} for r in labelled_corpus(per_topic=8, seed=seed)][:n]


@pytest.fixture(scope="module")
def corpus():
    return _corpus(40)


@pytest.fixture(scope="module")
def atlas(tiny_lm, tokenizer, corpus):
    """An atlas of every MLP neuron of the tiny model over 40 labelled sentences, CP-LRP (conserving)."""
    return collect(tiny_lm, tokenizer, corpus, NEURONS, top_k=4, method="cp-lrp", batch_size=8, progress=False)


def _same_atlas(a: FeatureAtlas, b: FeatureAtlas) -> None:
    """Equal top-k lists and counts; sums equal up to float32 rounding (each batch is summed in float32)."""
    assert a.sites == b.sites and a.tokens == b.tokens and a.seen == b.seen and a.contexts.keys() == b.contexts.keys()
    for context, entry in a.contexts.items():
        other = b.contexts[context]
        assert {**entry, "value": 0} == {**other, "value": 0} and entry["value"] == pytest.approx(other["value"])
    for name in a.sites:
        ranked = b.states[name].ranked()
        for key, x in a.states[name].ranked().items():
            y = ranked[key]
            if x.dtype == torch.int64:
                assert torch.equal(x, y), (name, key)
            else:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")  # float32 sums


# --- sites -------------------------------------------------------------------------------------------------


def test_sites_take_their_kind_and_width_from_the_module(tiny_lm):
    sites = {s.name: s for s in resolve(tiny_lm, [NEURONS, "model.layers.*.self_attn.o_proj", "model.layers.*"])}
    assert sites[SITE].kind == "neurons" and sites[SITE].width == 128
    assert (
        sites["model.layers.0.self_attn.o_proj"].kind == "heads" and sites["model.layers.0.self_attn.o_proj"].width == 4
    )
    assert sites["model.layers.1"].kind == "residual" and sites["model.layers.1"].width == 64
    (override,) = resolve(tiny_lm, f"{SITE}@residual")
    assert override.name == f"{SITE}@residual" and override.width == 64


def test_a_residual_site_takes_its_width_from_the_module_not_the_hidden_size(tiny_lm, tokenizer):
    widths = {s.name: s.width for s in resolve(tiny_lm, ["model.layers.0.mlp.up_proj", "model.embed_tokens"])}
    assert widths == {"model.layers.0.mlp.up_proj": 128, "model.embed_tokens": 64}
    assert resolve(tiny_lm, "model.layers.0.input_layernorm")[0].width == 64
    act = "model.layers.0.mlp.act_fn"
    with pytest.raises(LatentError, match=f"Can't tell the width of {act}'s output"):
        resolve(tiny_lm, act)
    with pytest.raises(LatentError, match=f"Can't tell the width of {act}'s output"):
        with steer(tiny_lm, {(act, 100): 1.0}):
            pass
    wrong = Site(act, "residual", 64, tiny_lm.get_submodule(act))  # a width the model does not give
    with pytest.raises(LatentError, match=f"Site {act} was resolved with 64 units, but the model gives it 128"):
        attnlrp.explain(tiny_lm, tokenizer, "The chef chopped", latent=[wrong])


def test_a_site_pattern_that_matches_nothing_shows_close_matches(tiny_lm):
    with pytest.raises(LatentError, match=r"matches no module.*close matches: model\.layers\.\*\.mlp\.down_proj"):
        resolve(tiny_lm, "model.layer.*.mlp.down_proj")
    with pytest.raises(LatentError, match="Unknown site kind 'neuron'"):
        resolve(tiny_lm, f"{SITE}@neuron")


def test_recorded_relevance_adds_up_per_layer_head_and_neuron(tiny_lm, tokenizer):
    """CP-LRP on a bias-free float64 model: every residual site holds y; heads and neurons hold what their
    attention and MLP blocks output (Recorder), all in the one backward of explain."""
    sites = [NEURONS, "model.layers.*.self_attn.o_proj", "model.layers.*"]
    blocks = attnlrp.Recorder(tiny_lm, ["model.layers.*.mlp", "model.layers.*.self_attn"])
    with blocks:
        exp = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", method="cp-lrp", latent=sites)
    totals = site_totals(exp.units)
    assert totals["model.layers.0"] == pytest.approx(exp.value, rel=1e-6)
    assert totals["model.layers.1"] == pytest.approx(exp.value, rel=1e-6)
    assert exp.total == pytest.approx(exp.value, rel=1e-6)
    recorded = blocks.totals()
    for layer in (0, 1):
        assert totals[f"model.layers.{layer}.mlp.down_proj"] == pytest.approx(
            recorded[f"model.layers.{layer}.mlp"], rel=1e-5
        )
        assert totals[f"model.layers.{layer}.self_attn.o_proj"] == pytest.approx(
            recorded[f"model.layers.{layer}.self_attn"], rel=1e-5
        )
    for entry in exp.units:
        listed = sum(u["relevance"] for u in entry["top"])
        assert listed + entry["rest"] == pytest.approx(entry["total"], rel=1e-9, abs=1e-12)
        assert len(entry["top"]) == min(
            10, 128 if "mlp" in entry["site"] else 64 if "o_proj" not in entry["site"] else 4
        )
        magnitudes = [abs(u["relevance"]) for u in entry["top"]]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_explain_latent_batched_equals_alone_and_needs_an_lrp_method(tiny_lm, tokenizer):
    prompts = ["The capital of France is", "Hello there, my old friend"]
    both = attnlrp.explain(tiny_lm, tokenizer, prompts, method="cp-lrp", latent=SITE)
    alone = attnlrp.explain(tiny_lm, tokenizer, prompts[1], method="cp-lrp", latent=SITE)
    assert both[1].units[0]["total"] == pytest.approx(alone.units[0]["total"], rel=1e-9)
    assert [u["unit"] for u in both[1].units[0]["top"]] == [u["unit"] for u in alone.units[0]["top"]]
    with pytest.raises(MethodError, match="LRP backward"):
        attnlrp.explain(tiny_lm, tokenizer, prompts[0], method="gradient", latent=SITE)
    with pytest.raises(LatentError, match="give the sites too"):
        attnlrp.explain(tiny_lm, tokenizer, prompts[0], atlas=object())


def test_explain_latent_reads_a_bfloat16_model_as_plain_explain_does(tiny_lm, tokenizer):
    # "Got unsupported ScalarType BFloat16": the readout built results from the half-precision relevance
    half = copy.deepcopy(tiny_lm).to(torch.bfloat16)
    exp = attnlrp.explain(half, tokenizer, "The capital of France is", latent=SITE)
    plain = attnlrp.explain(half, tokenizer, "The capital of France is")
    assert (exp.scores == plain.scores).all() and exp.units[0]["top"]


def test_unit_relevance_is_the_same_with_eager_and_sdpa_attention(tokenizer):
    from tiny_models import build

    ids = [[5, 17, 42, 8, 99, 3, 61], [7, 7, 21, 80]]
    sites = ["model.layers.*.mlp.down_proj", "model.layers.*.self_attn.o_proj"]
    runs = [attnlrp.explain(build("llama", attn).model, tokenizer, ids, latent=sites) for attn in ("eager", "sdpa")]
    for eager, sdpa in zip(*runs):
        assert eager.value == pytest.approx(sdpa.value, rel=1e-6)
        for a, b in zip(eager.units, sdpa.units):
            assert a["total"] == pytest.approx(b["total"], rel=1e-6, abs=1e-12)
            assert [u["unit"] for u in a["top"][:3]] == [u["unit"] for u in b["top"][:3]]


def test_explanation_units_survive_json_and_reach_the_html(tiny_lm, tokenizer, tmp_path):
    exp = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", latent=SITE)
    again = attnlrp.Explanation.load(exp.save(tmp_path / "e.json"))
    assert again == exp and again.units == exp.units
    assert '"units"' in exp.html_view() and "withUnits" in exp.html_view()


# --- collect and the atlas -----------------------------------------------------------------------------------


def test_collect_keeps_the_true_top_k_by_activation_and_by_relevance(tiny_lm, tokenizer, corpus, atlas):
    """Against every context explained alone: the peak activation and summed relevance of each unit."""
    (site,) = resolve(tiny_lm, SITE)
    peaks, sums, every = [], [], []
    for entry in corpus:
        with SiteRecorder(tiny_lm, [site]) as recorder:
            attnlrp.explain(tiny_lm, tokenizer, entry["text"], method="cp-lrp")
        every.append(recorder.activation[SITE][0].float())
        peaks.append(every[-1].amax(0))
        sums.append(recorder.relevance[SITE][0].sum(0))
    peaks, sums = torch.stack(peaks).float(), torch.stack(sums).float()  # [contexts, units]
    state = atlas.states[SITE].ranked()
    for unit in (0, 17, 99):
        for scores, prefix in ((peaks, "act"), (sums, "rel")):
            order = sorted(range(len(corpus)), key=lambda c: (-float(scores[c, unit]), c))[:4]
            assert state[f"{prefix}_context"][unit].tolist() == order
            torch.testing.assert_close(state[f"{prefix}_score"][unit], scores[order, unit], rtol=1e-5, atol=1e-7)
    tokens = sum(len(tokenizer(e["text"]).input_ids) for e in corpus)
    assert atlas.tokens == tokens and atlas.seen == len(corpus)
    stats = atlas.stats(SITE, 17)
    assert stats["relevance_mean"] == pytest.approx(float(sums[:, 17].double().mean()), rel=1e-5)
    every = torch.cat(every)[:, 17]  # every real token's activation of unit 17
    assert (stats["activation_max"], stats["activation_min"]) == (every.max().item(), every.min().item())
    assert stats["activation_mean"] == pytest.approx(every.double().mean().item(), rel=1e-5)
    edges, counts = atlas.histogram(SITE, 17)
    assert edges == HISTOGRAM_EDGES.tolist()
    assert counts == torch.bincount(histogram_bins(every), minlength=BINS).tolist() and sum(counts) == tokens
    assert stats["active_share"] == pytest.approx(float((every >= 2**-9).double().mean()))


def test_histogram_bins_follow_the_edges():
    """One bin around zero (|a| < 2^-9), then one per octave on each side; the outermost bins are open."""
    assert len(HISTOGRAM_EDGES) == BINS - 1
    octaves = HISTOGRAM_EDGES[HISTOGRAM_EDGES > 0]
    tiny = [0.0, -0.0, 1e-30, -1e-30, 2**-10, 1e-40, 1e6, -1e6, 3.0, -3.0]
    values = torch.cat([octaves, -octaves, octaves * 0.999, -octaves * 1.001, torch.tensor(tiny)]).float()
    expected = (BINS // 2) + values.sign() * torch.bucketize(values.abs().double(), octaves, right=True)
    assert histogram_bins(values).tolist() == expected.int().tolist()


def test_top_contexts_carry_their_tokens_and_per_token_activations(atlas):
    (best,) = atlas.top(SITE, 5, "activation", count=1)
    assert "tokens" not in atlas.contexts[best["context"]]  # token ids only; display strings once per id
    assert len(best["tokens"]) == len(best["activations"]) and max(best["activations"]) == pytest.approx(best["score"])
    (first,) = atlas.top(SITE, 5, "relevance", count=1)
    assert sum(first["relevance"]) == pytest.approx(first["score"], rel=1e-5)
    assert first["topic"] in TOPICS and isinstance(first["target"], str)


def test_merge_gives_what_one_pass_over_both_corpora_gives(tiny_lm, tokenizer, corpus, atlas):
    options = dict(top_k=4, method="cp-lrp", batch_size=8, progress=False)
    first = collect(tiny_lm, tokenizer, corpus[:24], NEURONS, **options)
    second = collect(tiny_lm, tokenizer, corpus[24:], NEURONS, **options)
    _same_atlas(first.merge(second), atlas)
    shards = [collect(tiny_lm, tokenizer, corpus, NEURONS, shard=(r, 3), **options) for r in range(3)]
    some = shards[0].merge(shards[2])
    assert not shards[0].complete and not some.complete and "shards missing: ranks [1]" in repr(some)
    merged = some.merge(shards[1])
    _same_atlas(merged, atlas)
    assert merged.complete and merged.missing_shards == {}
    assert (merged.position, merged.prefix_digest) == (atlas.position, atlas.prefix_digest), "the corpus it covers"
    with pytest.raises(LatentError, match="same corpus"):
        shards[0].merge(shards[0])
    # a shard takes whole batches of the one-process run: shards of another batch size hold other contexts
    other_plan = collect(tiny_lm, tokenizer, corpus, NEURONS, shard=(1, 3), **{**options, "batch_size": 4})
    with pytest.raises(LatentError, match="runs of 3 and 3 processes, 8 and 4 contexts per batch"):
        shards[0].merge(other_plan)
    other = collect(tiny_lm, tokenizer, corpus[:8], NEURONS, **{**options, "top_k": 3})
    with pytest.raises(LatentError, match="top_k"):
        atlas.merge(other)


def test_merging_keeps_the_output_readings_of_either_atlas(tiny_lm, tokenizer, corpus):
    options = dict(top_k=2, batch_size=8, progress=False)
    first = collect(tiny_lm, tokenizer, corpus[:8], SITE, **options)
    second = collect(tiny_lm, tokenizer, corpus[8:16], SITE, **options)
    first.read_outputs()
    for merged in (first.merge(second), second.merge(first)):  # read once, kept: not read again when asked
        assert merged.states[SITE].promoted.keys() == first.states[SITE].promoted.keys() != set()


def test_the_atlas_saves_and_loads_without_pickle(atlas, tmp_path):
    folder = atlas.read_outputs().save(tmp_path / "atlas")
    assert sorted(p.name for p in folder.iterdir()) == ["atlas.json", "tensors.safetensors"]
    loaded = FeatureAtlas.load(folder)
    assert atlas.states[SITE].promoted and loaded.states[SITE].promoted.keys() == atlas.states[SITE].promoted.keys()
    _same_atlas(loaded, atlas)
    assert loaded.card(SITE, 3, conditional=0) == atlas.card(SITE, 3, conditional=0)
    assert loaded.vocabulary == atlas.vocabulary and loaded.topics == atlas.topics
    with pytest.raises(LatentError, match="no readable atlas"):
        FeatureAtlas.load(tmp_path)


def test_collect_resumes_after_an_interruption(tiny_lm, tokenizer, corpus, atlas, tmp_path):
    def interrupted():
        for n, entry in enumerate(corpus):
            if n == 20:
                raise KeyboardInterrupt
            yield entry

    options = dict(top_k=4, method="cp-lrp", batch_size=8, progress=False, checkpoint=tmp_path / "ckpt", every=1)
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_lm, tokenizer, interrupted(), NEURONS, **options)
    partial = FeatureAtlas.load(tmp_path / "ckpt")
    assert not partial.complete and partial.position == 16 and partial.seen == 16
    _same_atlas(collect(tiny_lm, tokenizer, corpus, NEURONS, **options), atlas)
    _same_atlas(collect(tiny_lm, tokenizer, corpus, NEURONS, **options), atlas)  # finished: read back as it is
    changed = [{"text": "Something else entirely."}] + corpus[1:]
    for other in (changed, corpus + [{"text": "One more."}]):  # a finished atlas is no atlas of another corpus
        with pytest.raises(LatentError, match=r"holds a finished atlas of another corpus \(40 texts; this one has"):
            collect(tiny_lm, tokenizer, other, NEURONS, **options)
    with pytest.raises(LatentError, match="other settings"):
        collect(tiny_lm, tokenizer, corpus, NEURONS, **{**options, "top_k": 5})
    options["checkpoint"] = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_lm, tokenizer, interrupted(), NEURONS, **options)
    with pytest.raises(LatentError, match="corpus differs"):
        collect(tiny_lm, tokenizer, changed, NEURONS, **options)


def test_memory_is_bounded_by_top_k_not_by_the_corpus(tiny_lm, tokenizer, atlas):
    bigger = collect(
        tiny_lm, tokenizer, _corpus(80, seed=1), NEURONS, top_k=4, method="cp-lrp", batch_size=8, progress=False
    )
    for name in atlas.sites:
        assert {k: v.shape for k, v in bigger.states[name].tensors.items()} == {
            k: v.shape for k, v in atlas.states[name].tensors.items()
        }
        assert bigger.states[name].tensors["histogram"].shape == (128, BINS)
    lists = [s.tensors[key] for s in bigger.states.values() for key in ("act_context", "rel_context")]
    named = set(torch.cat([ids.flatten() for ids in lists]).tolist()) - {-1}
    assert set(bigger.contexts) == named and len(named) <= 2 * 4 * 256


def test_bad_corpora_and_settings_are_refused(tiny_lm, tokenizer, tmp_path):
    with pytest.raises(LatentError, match="corpus is empty"):
        collect(tiny_lm, tokenizer, [], SITE, progress=False)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(LatentError, match="corpus is empty"):
        collect(tiny_lm, tokenizer, tmp_path / "empty.jsonl", SITE, progress=False)
    with pytest.raises(LatentError, match="one string"):
        collect(tiny_lm, tokenizer, "just one text", SITE, progress=False)
    with pytest.raises(LatentError, match="rank < world"):
        collect(tiny_lm, tokenizer, ["a text"], SITE, shard=(2, 2), progress=False)
    with pytest.raises(LatentError, match="method must be"):
        collect(tiny_lm, tokenizer, ["a text"], SITE, method="gradient", progress=False)
    with pytest.raises(LatentError, match="one next token per context"):
        collect(tiny_lm, tokenizer, ["a text"], SITE, target=attnlrp.Contrast(" a", " b"), progress=False)
    # a span is one next token's first piece here: collect takes no Answer, so the error doesn't offer one
    for given, where in ((dict(target=" Paris is"), "target: "), (dict(), "corpus entry 0: ")):
        entries = [{"text": "a text", "target": " Paris is"}] if not given else ["a text"]
        with pytest.raises(attnlrp.TargetError, match=f"^{where}Target ' Paris is' is 2 tokens") as info:
            collect(tiny_lm, tokenizer, entries, SITE, progress=False, **given)
        assert "Answer" not in str(info.value) and str(info.value).endswith(".")


def test_collect_reads_paths_and_records_and_names_a_bad_entry(tiny_lm, tokenizer, tmp_path):
    records = labelled_corpus(per_topic=1)[:4]
    path = write_corpus(records, tmp_path / "c.jsonl")
    by_records = collect(tiny_lm, tokenizer, records, SITE, top_k=1, batch_size=4, progress=False)
    by_path = collect(tiny_lm, tokenizer, path, SITE, top_k=1, batch_size=4, progress=False)
    assert by_records.seen == by_path.seen == 4 and by_records.topics == by_path.topics
    assert list(read_corpus(read_corpus(path))) == list(read_corpus(records))
    (tmp_path / "c.txt").write_text("A text.\n", encoding="utf-8")
    for given in (tmp_path / "c.txt", "c.txt"):
        with pytest.raises(LatentError, match=r"c\.txt is not a corpus file: corpus files are JSONL \(\.jsonl, \.json"):
            collect(tiny_lm, tokenizer, given, SITE, progress=False)
    for empty in ("", "  "):
        with pytest.raises(LatentError, match="^corpus entry 2: the text is empty"):
            collect(tiny_lm, tokenizer, ["A text.", "Another text.", empty], SITE, progress=False)


def test_write_corpus_round_trips_with_read_corpus(tmp_path):
    from attnlrp.latent import Record

    records = [Record("The cook", "cooking", " chef"), Record("Hi there", "", 42), Record("Plain", 0), Record("A")]
    assert list(read_corpus(write_corpus(records, tmp_path / "c.jsonl"))) == records


# --- labels and cards -------------------------------------------------------------------------------------


def test_labels_are_deterministic_with_a_purity():
    def context(tokens, peak, topic):
        return {
            "tokens": tokens,
            "activations": [1.0 if i == peak else 0.0 for i in range(len(tokens))],
            "topic": topic,
        }

    topics = {"sports": 10, "music": 30}
    on_goal = [context(["The", " goal", " was"], 1, t) for t in ("sports", "music", "music", "sports")]
    assert label_of(on_goal, topics).text == "token 'goal'" and label_of(on_goal, topics).purity == 1.0
    by_topic = [context(["A", w, "."], 1, "sports") for w in (" ball", " team", " goal")] + [
        context(["A", " song", "."], 1, "music")
    ]
    label = label_of(by_topic, topics)
    assert (label.text, label.purity, label.kind, label.chance) == ("topic: sports", 0.75, "topic", 0.25)
    assert label_of(by_topic, topics, labeller=lambda cs: ("ball games", 0.9)).text == "ball games"
    assert label_of(by_topic, {}).kind == "token"  # an unlabelled corpus: tokens only


def test_card_holds_everything_and_its_conditional_heatmaps_conserve(atlas):
    card = atlas.card(SITE, 17)
    assert card.label == atlas.label(SITE, 17).text and 0 < card.purity <= 1
    assert len(card.top_activation) == 4 and len(card.top_relevance) == 4
    assert len(card.promoted) == 10 and len(card.suppressed) == 10
    assert card.promoted[0][1] >= card.promoted[-1][1] and card.suppressed[0][1] <= card.suppressed[-1][1]
    assert len(card.histogram["counts"]) == BINS and card.stats["tokens"] == atlas.tokens
    assert len(card.conditional) == 3
    for heatmap, context in zip(card.conditional, card.top_relevance):
        # CP-LRP, no biases: the input relevance through the unit is the unit's relevance
        assert sum(heatmap["scores"]) == pytest.approx(heatmap["unit_relevance"], rel=1e-6, abs=1e-12)
        assert heatmap["unit_relevance"] == pytest.approx(context["score"], rel=1e-5)
    assert not any("need not sum" in note for note in card.notes)


def test_a_labeller_names_the_card_from_its_top_contexts(atlas):
    seen = []

    def labeller(contexts):
        seen.append(contexts)
        return "ends of clauses", 0.8

    card = atlas.card(SITE, 17, labeller=labeller)
    assert (card.label, card.purity) == ("ends of clauses", 0.8)
    assert [c["context"] for c in seen[0]] == [c["context"] for c in atlas.top(SITE, 17, "activation")]
    assert atlas.card(SITE, 17).label != "ends of clauses", "the labeller is used only where it is given"


def test_cards_need_their_model_for_conditional_heatmaps_and_say_so(atlas, tmp_path):
    loaded = FeatureAtlas.load(atlas.save(tmp_path / "a"))
    card = loaded.card(SITE, 2)
    assert card.conditional == [] and any("bind the atlas" in n for n in card.notes)


def test_unit_index_out_of_range_is_a_clear_error(tiny_lm, tokenizer, atlas):
    with pytest.raises(
        LatentError, match=r"Unit 128 is out of range for site model\.layers\.1\.mlp\.down_proj.*0\.\.127"
    ):
        atlas.card(SITE, 128)
    with pytest.raises(LatentError, match="no site 'model.layers.1.mlp.up_proj'.*close matches"):
        atlas.card("model.layers.1.mlp.up_proj", 0)
    with pytest.raises(LatentError, match="out of range"):
        with steer(tiny_lm, {(SITE, -1): 1.0}):
            pass
    with pytest.raises(LatentError, match="A unit index is an integer, got True"):
        atlas.card(SITE, True)
    with pytest.raises(LatentError, match=r"Unit model\.layers\.1\.mlp\.down_proj:3 is given twice"):
        with steer(tiny_lm, {(SITE, 3): 4.0, (f"{SITE}@neurons", 3): 4.0}):
            pass
    with pytest.raises(LatentError, match="A site is a module-path pattern .* not 5"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", latent=5)


def test_atlas_page_is_one_self_contained_view(atlas, tmp_path):
    one = atlas.to_html(tmp_path / "one.html", sites=SITE).read_text(encoding="utf-8")  # a name, not its letters
    assert one == atlas.to_html(tmp_path / "list.html", sites=[SITE]).read_text(encoding="utf-8")
    page = atlas.to_html(tmp_path / "atlas.html").read_text(encoding="utf-8")
    assert page.count('class="attnlrp-view"') == 1 and " id=" not in page and "http" not in page.split("<script")[0]
    data = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    assert len(data["cards"]) == 256 and all(
        "tokens" not in c for card in data["cards"] for c in card["top_activation"]
    )


def test_explain_labels_units_from_an_atlas(tiny_lm, tokenizer, atlas, make_tiny_lm, tmp_path):
    folder = atlas.save(tmp_path / "atlas")
    for given in (atlas, folder, str(folder)):  # the atlas, or the folder it was saved in
        exp = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", latent=NEURONS, atlas=given)
        for entry in exp.units:
            for unit in entry["top"]:
                assert unit["label"] == atlas.label(entry["site"], unit["unit"]).text
                assert unit["purity"] == atlas.label(entry["site"], unit["unit"]).purity
    with pytest.raises(LatentError, match="atlas= takes a FeatureAtlas or the folder it was saved in, not int"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", latent=NEURONS, atlas=3)
    # another model: its units are not the atlas's, by its weights (whatever its name), or else by name and width
    other = make_tiny_lm(intermediate_size=64)
    for name in ("another-model", model_name(tiny_lm)):
        other.name_or_path = name
        with pytest.raises(LatentError, match=f"The atlas was collected on .*, and {name} is another model"):
            attnlrp.explain(other, tokenizer, "Hi", latent=NEURONS, atlas=atlas)
        with pytest.raises(LatentError, match=f"This atlas was collected on .*, and {name} is another model"):
            FeatureAtlas.load(folder, model=other, tokenizer=tokenizer)
    unsampled = FeatureAtlas.load(folder)  # an atlas that holds no sample of weights
    del unsampled.settings["weights"]
    with pytest.raises(LatentError, match=r"has 64 units here, but 128 in the atlas"):
        attnlrp.explain(other, tokenizer, "Hi", latent=NEURONS, atlas=unsampled)
    with pytest.raises(LatentError, match=r"has 64 units in .*, but 128 in the atlas"):
        unsampled.bind(other, tokenizer)


def test_the_weight_sample_reaches_the_last_value_of_a_large_matrix():
    # float32 indices rounded the last one of SmolLM2's embedding (49152 x 576) past its end: an IndexError
    from attnlrp.tasks.model_identity import weight_sample

    layer = torch.nn.Linear(4096, 4099, bias=False, dtype=torch.float16)  # 2^24 + 12291 values
    with torch.no_grad():
        layer.weight.view(-1)[-1] = 7.0
    assert weight_sample(layer)["weight"][-1] == 7.0


def test_an_atlas_knows_its_model_by_its_weights_not_its_folder_name(tiny_lm, tokenizer, atlas, tmp_path):
    # By the folder's last name alone, a fine-tune saved as .../final was taken for the model, and the same model
    # under another name was refused.
    folder = atlas.save(tmp_path / "atlas")
    renamed = copy.deepcopy(tiny_lm)
    renamed.name_or_path = "elsewhere/renamed"
    FeatureAtlas.load(folder, model=renamed, tokenizer=tokenizer)  # the same weights
    FeatureAtlas.load(folder, model=copy.deepcopy(tiny_lm).to(torch.bfloat16), tokenizer=tokenizer)  # rounded
    tuned = copy.deepcopy(tiny_lm)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.o_proj.weight.mul_(1.01)  # one matrix moved by 1%
    with pytest.raises(LatentError, match="is another model \\(its name or weights differ\\)"):
        FeatureAtlas.load(folder, model=tuned, tokenizer=tokenizer)


# --- SAE ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae(tiny_lm, tokenizer):
    """A tiny TopK SAE trained briefly on the tiny model's residual stream after layer 0."""
    data = site_outputs(tiny_lm, tokenizer, [r.text for r in labelled_corpus(per_topic=10)], "model.layers.0")
    return train_sae(data, "model.layers.0", width=128, k=8, steps=300, batch_size=256).double()


def test_training_an_sae_reconstructs_the_site(sae):
    assert sae.stats["fve"] > 0.3 and sae.stats["dead_on_held_out"] < 0.5
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128, dtype=torch.float64))


def test_relevance_through_an_sae_conserves_with_its_error_term(tiny_lm, tokenizer, sae):
    prompt = "The capital of France is"
    exp = attnlrp.explain(tiny_lm, tokenizer, prompt, method="cp-lrp", latent=sae)
    (entry,) = exp.units
    assert entry["site"] == "model.layers.0@sae" and entry["error"] != 0
    assert entry["total"] + entry["error"] + entry["bias"] == pytest.approx(exp.value, rel=1e-6)
    plain = attnlrp.explain(tiny_lm, tokenizer, prompt, method="cp-lrp")
    assert exp.value == plain.value  # the SAE leaves the forward as it was
    unbiased = copy.deepcopy(sae)
    unbiased.b_enc.zero_()
    unbiased.b_dec.zero_()
    exp = attnlrp.explain(tiny_lm, tokenizer, prompt, method="cp-lrp", latent=unbiased)
    (entry,) = exp.units
    assert entry["bias"] == 0.0
    assert exp.total == pytest.approx(entry["total"], rel=1e-6)  # the input gets what the latents hold
    assert exp.total + entry["error"] == pytest.approx(exp.value, rel=1e-6)


def test_a_residual_site_reads_the_same_whatever_the_place_of_an_sae_of_its_module(tiny_lm, tokenizer, sae):
    prompt = "The chef chopped the onions and"

    def residual(latent):
        exp = attnlrp.explain(tiny_lm, tokenizer, prompt, method="cp-lrp", latent=latent)
        return next(u["total"] for u in exp.units if u["site"] == sae.site)

    alone = residual([sae.site])
    assert residual([sae, sae.site]) == pytest.approx(alone, rel=1e-9)
    assert residual([sae.site, sae]) == pytest.approx(alone, rel=1e-9)


def test_heads_and_sae_latents_get_atlases_and_cards_too(tiny_lm, tokenizer, corpus, sae, tmp_path):
    heads = "model.layers.0.self_attn.o_proj"
    atlas = collect(
        tiny_lm, tokenizer, corpus[:16], [heads, sae], top_k=3, method="cp-lrp", batch_size=8, progress=False
    )
    assert atlas.sites == [heads, "model.layers.0@sae"] and atlas.state(heads).width == 4
    card = atlas.card(heads, 2)
    assert card.promoted == [] and any("no fixed output direction" in n for n in card.notes)
    for heatmap in card.conditional:
        assert sum(heatmap["scores"]) == pytest.approx(heatmap["unit_relevance"], rel=1e-6, abs=1e-12)
    latent = int(atlas.relevance_mass("model.layers.0@sae").argmax())
    card = atlas.card("model.layers.0@sae", latent)
    assert len(card.promoted) == 10 and card.conditional and card.site_kind == "sae"
    assert [n for n in card.notes if "encoder biases" in n]  # the card says why its heatmaps fall short:
    assert sum(card.conditional[0]["scores"]) != pytest.approx(card.conditional[0]["unit_relevance"], rel=1e-6)
    page = atlas.to_html(tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.count('"site_kind": "sae"') == sae.width and page.count('"site_kind": "heads"') == 4


def test_an_atlas_of_one_sae_is_refused_for_another_of_the_same_site(tiny_lm, tokenizer, corpus, sae, tmp_path):
    other = copy.deepcopy(sae)
    other.W_enc.mul_(-1.0)
    folder = tmp_path / "ck"
    atlas = collect(tiny_lm, tokenizer, corpus[:8], sae, top_k=2, batch_size=4, progress=False, checkpoint=folder)
    with pytest.raises(LatentError, match="sae_weights"):
        collect(tiny_lm, tokenizer, corpus[:8], other, top_k=2, batch_size=4, progress=False, checkpoint=folder)
    with pytest.raises(LatentError, match="collected with another SAE"):
        attnlrp.explain(tiny_lm, tokenizer, "The chef chopped", latent=other, atlas=atlas)
    with pytest.raises(LatentError, match="collected with another SAE"):
        FeatureAtlas.load(folder, model=tiny_lm, tokenizer=tokenizer, saes=[other])
    FeatureAtlas.load(
        folder, model=tiny_lm, tokenizer=tokenizer, saes=[copy.deepcopy(sae).float()]
    )  # the same SAE, in float32
    attnlrp.explain(tiny_lm, tokenizer, "The chef chopped", latent=sae, atlas=atlas)


def test_an_sae_whose_width_does_not_match_its_site_is_refused(tiny_lm):
    with pytest.raises(LatentError, match="reads 32 dimensions, but model.layers.0 .* gives 64"):
        resolve(tiny_lm, SAE(32, 64, 4, "model.layers.0"))
    with pytest.raises(LatentError, match="matches no module"):
        resolve(tiny_lm, SAE(64, 64, 4, "model.layer.0"))


def test_saes_save_and_load_by_name(sae, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path))
    sae.save(tmp_path / "sae" / "tiny-layer0")
    loaded = load_sae("tiny-layer0")
    assert loaded.site == sae.site and loaded.k == sae.k and loaded.stats == sae.stats
    assert torch.equal(loaded.W_dec.double(), sae.W_dec.float().double())
    with pytest.raises(LatentError, match="there are: tiny-layer0"):
        load_sae("missing")


# --- steering ----------------------------------------------------------------------------------------------


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_steering_is_reversible_exactly_and_touches_one_model(tiny_lm, tokenizer, make_tiny_lm):
    other = make_tiny_lm()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    before, others = _logits(tiny_lm, ids), _logits(other, ids)
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in tiny_lm.modules()]  # transformers' own
    assert attnlrp.steer is steer, "attnlrp.steer is the one steering entry point"
    with steer(tiny_lm, {(SITE, 3): 5.0, ("model.layers.0", 7): -2.0}) as steered:
        assert steered is tiny_lm
        assert not torch.equal(_logits(tiny_lm, ids), before)
        assert torch.equal(_logits(other, ids), others)
    assert torch.equal(_logits(tiny_lm, ids), before)
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in tiny_lm.modules()] == hooks


def test_a_site_resolved_on_another_model_is_refused(tiny_lm, tokenizer, make_tiny_lm):
    other = make_tiny_lm()
    (site,) = resolve(tiny_lm, SITE)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    before = _logits(tiny_lm, ids)
    with pytest.raises(LatentError, match="resolved on another model"):
        with steer(other, {(site, 3): 50.0}):
            pass
    with pytest.raises(LatentError, match="resolved on another model"):
        attnlrp.explain(other, tokenizer, "The chef chopped", latent=[site])
    assert torch.equal(_logits(tiny_lm, ids), before)
    assert resolve(tiny_lm, site) == [site]


def test_steering_modes_set_the_unit_as_asked(tiny_lm, tokenizer):
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    (site,) = resolve(tiny_lm, SITE)

    def activation(units, mode):
        with steer(tiny_lm, units, mode), SiteRecorder(tiny_lm, [site]) as recorder, torch.no_grad():
            tiny_lm(ids)
        return recorder.activation[SITE][0]

    plain = activation({(SITE, 0): 1.0}, "scale")
    assert torch.equal(activation({(SITE, 3): 2.5}, "clamp")[:, 3], torch.full((ids.shape[1],), 2.5, dtype=plain.dtype))
    assert torch.equal(activation({(SITE, 3): 0.0}, "scale")[:, 3], torch.zeros(ids.shape[1], dtype=plain.dtype))
    torch.testing.assert_close(activation({(SITE, 3): 1.5}, "add")[:, 3], plain[:, 3] + 1.5)
    with pytest.raises(LatentError, match="steer by mode='scale'"):
        with steer(tiny_lm, {("model.layers.0.self_attn.o_proj", 1): 2.0}, "add"):
            pass


def test_sae_features_steer_along_their_decoder_direction(tiny_lm, tokenizer, sae):
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    (residual,) = resolve(tiny_lm, "model.layers.0")
    with SiteRecorder(tiny_lm, [residual]) as plain, torch.no_grad():
        tiny_lm(ids)
    with steer(tiny_lm, {(sae, 9): 3.0}), SiteRecorder(tiny_lm, [residual]) as steered, torch.no_grad():
        tiny_lm(ids)
    moved = steered.activation["model.layers.0"][0] - plain.activation["model.layers.0"][0]
    torch.testing.assert_close(moved, (3.0 * sae.W_dec[9]).expand_as(moved))


def test_steering_a_steered_or_bound_model_is_refused(tiny_lm, tokenizer):
    with steer(tiny_lm, {(SITE, 1): 1.0}):
        with pytest.raises(SteeringError, match=r"already steered \(model\.layers\.1\.mlp\.down_proj\[1 units\]\)"):
            with steer(tiny_lm.model, {("layers.0.mlp.down_proj", 2): 1.0}):
                pass
        # the right order: steer, then bind (explain binds inside)
        steered = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", method="cp-lrp")
    plain = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", method="cp-lrp")
    assert steered.value != plain.value
    with attnlrp.lrp(tiny_lm):
        with pytest.raises(SteeringError, match="steer first, then bind"):
            with steer(tiny_lm, {(SITE, 1): 1.0}):
                pass
    with pytest.raises(LatentError, match="dict"):
        with steer(tiny_lm, {}):
            pass


def test_a_copy_made_while_steered_is_not_steered(tiny_lm, tokenizer):
    def hooks(model):
        return [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]

    ids = tokenizer("The chef chopped", return_tensors="pt").input_ids
    before = _logits(tiny_lm, ids)
    # transformers may have put output-recording hooks of its own on the shared model in earlier tests
    its_own = {h.__qualname__ for h in hooks(tiny_lm)}
    with steer(tiny_lm, {(SITE, 3): 50.0, ("model.layers.0", 5): 9.0}):
        copied = copy.deepcopy(tiny_lm)
        assert torch.equal(_logits(copied, ids), before)
    assert torch.equal(_logits(copied, ids), before)
    # its steering hooks hold neither the original modules nor the steering (they kept the original model in memory)
    steering = [h for h in hooks(copied) if h.__qualname__ not in its_own]
    assert steering and all(h.__closure__ is None and h.__defaults__ is None for h in steering)
    with steer(copied, {(SITE, 3): 50.0}):
        assert not torch.equal(_logits(copied, ids), before)


def test_strengths_are_real_numbers_of_python_numpy_or_torch(tiny_lm, tokenizer):
    import numpy as np

    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with steer(tiny_lm, {(SITE, 3): 2.5}):
        expected = _logits(tiny_lm, ids)
    for strength in (np.float32(2.5), np.float64(2.5), torch.tensor(2.5), torch.tensor(2.5, dtype=torch.float64)):
        with steer(tiny_lm, {(SITE, 3): strength}):
            assert torch.equal(_logits(tiny_lm, ids), expected), repr(strength)
    for bad in (True, torch.tensor(True), np.float32("nan"), torch.tensor([1.0, 2.0]), "2.5"):
        with pytest.raises(LatentError, match="must be a finite number"):
            with steer(tiny_lm, {(SITE, 3): bad}):
                pass


def test_prompts_of_steering_are_a_list_of_texts(tiny_lm, tokenizer):
    # one string was read as a list of one-character prompts (11 continuations); an empty list crashed in max()
    from attnlrp.latent import generate_steered

    for prompts, says in (("Hello there", "one string, 'Hello there'"), ([], r"not \[\]"), ([""], r"not \[''\]")):
        with pytest.raises(LatentError, match=f"Prompts are a list of non-empty texts .*{says}"):
            generate_steered(tiny_lm, tokenizer, prompts, {(SITE, 1): 1.0}, max_new_tokens=2)
    with pytest.raises(LatentError, match="one string"):
        sweep(tiny_lm, tokenizer, [(SITE, 7)], [0.0], ["paris"], "The city of", max_new_tokens=2)


def test_a_strength_sweep_reports_where_quality_breaks(tiny_lm, tokenizer):
    result = sweep(tiny_lm, tokenizer, [(SITE, 7)], [0.0, 50.0], ["paris"], ["I like", "The city of"], max_new_tokens=4)
    still, pushed = result.rows
    assert still["kl"] == pytest.approx(0.0, abs=1e-9) and pushed["kl"] > 0
    assert still["perplexity"] != pushed["perplexity"] and len(pushed["generations"]) == 2
    assert 0 <= pushed["concept_rate"] <= 1 and 0 < still["concept_prob"] < 1
    assert "| 50 |" in result.table() and "<table>" in result.html_view()


def test_sweep_and_answer_probabilities_read_each_text_as_alone_with_absolute_positions(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnlrp.latent.knowledge import answer_probabilities

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128)
    gpt2 = GPT2LMHeadModel(config).double().eval()
    paris = tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    long = "The capital of the country of France is the city of"
    alone = answer_probabilities(gpt2, tokenizer, ["The capital"], [paris])
    batched = answer_probabilities(gpt2, tokenizer, ["The capital", long], [paris, paris])
    assert batched[0] == pytest.approx(alone[0], rel=1e-9)
    neutral = ["The meeting was moved to Thursday afternoon because two members could not attend.", "She read it."]
    nll = []
    for text in neutral:  # every real next-token prediction of each text, read alone
        ids = tokenizer(text, return_tensors="pt").input_ids
        log_probs = torch.log_softmax(_logits(gpt2, ids)[0, :-1], -1)
        nll += (-log_probs.gather(-1, ids[0, 1:, None])).squeeze(-1).tolist()
    (row,) = sweep(
        gpt2, tokenizer, [("transformer.h.1", 3)], [0.0], ["chef"], ["The cook"], neutral, max_new_tokens=1
    ).rows
    assert row["perplexity"] == pytest.approx(torch.tensor(nll).mean().exp().item(), rel=1e-9)


def test_a_concept_is_named_by_whole_words_only():
    assert _names_concept("Playing the Guitar all day", ["guitar"])
    assert not _names_concept("playing the guitar", ["tar", "rack"]) and not _names_concept("on track", ["rack"])
    assert _names_concept("A rack, then tar.", ["tar"]) and _names_concept("new york city", ["New York"])


# --- knowledge units and faithfulness ----------------------------------------------------------------------


def test_knowledge_units_and_their_effects(tiny_lm, tokenizer):
    prompts = [f"The capital of {c} is" for c in ("France", "Spain", "Italy", "Japan", "Egypt", "Peru")]
    answers = [" Paris", " Madrid", " Rome", " Tokyo", " Cairo", " Lima"]
    found = knowledge_units(tiny_lm, tokenizer, prompts, answers, NEURONS, count=6, draws=2)
    assert len(found.units) == 6 and len(found.prompts) == 3 and len(found.held_out) == 3
    scores = [u["score"] for u in found.units]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    for part in ("found", "held_out"):
        effect = found.effects[part]
        assert set(effect) == {"before", "suppress", "enhance"} and effect["before"]["n"] == 3
        assert effect["suppress"]["knowledge"]["mean"] != effect["before"]["mean"]
    assert "| found (3) |" in found.table()
    contrast = (["The opposite of hot is", "The opposite of up is"], [" cold", " down"])
    refined = knowledge_units(tiny_lm, tokenizer, prompts, answers, NEURONS, count=6, draws=1, contrast=contrast)
    assert [u["score"] for u in refined.units] == sorted((u["score"] for u in refined.units), reverse=True)
    assert {(u["site"], u["unit"]) for u in refined.units} != {(u["site"], u["unit"]) for u in found.units}


def test_knowledge_units_refuse_counts_draws_and_held_out_shares_they_cant_use(tiny_lm, tokenizer):
    prompts = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]
    answers = [" Paris", " Madrid", " Rome"]
    heads = "model.layers.1.self_attn.o_proj"  # 4 units
    with pytest.raises(LatentError, match=f"3 of the 4 units of {heads} are knowledge units"):
        knowledge_units(tiny_lm, tokenizer, prompts, answers, heads, count=3, draws=1)
    for bad in ({"draws": 0}, {"count": 0}, {"count": 2.5}):
        with pytest.raises(LatentError, match=f"needs {next(iter(bad))} to be a whole number of at least 1"):
            knowledge_units(tiny_lm, tokenizer, prompts, answers, heads, **bad)
    for held_out in (1.0, 1.5, -0.5):
        with pytest.raises(LatentError, match="held_out is the share of prompts held out"):
            knowledge_units(tiny_lm, tokenizer, prompts, answers, heads, count=1, held_out=held_out)


def test_knowledge_units_check_the_atlas_and_take_one_token_answers(tiny_lm, make_tiny_lm, tokenizer, atlas, tmp_path):
    # another model's atlas labelled the units with its labels; a folder crashed; " Paris is" was cut to " Paris"
    prompts, answers = ["The capital of France is", "The capital of Spain is"], [" Paris", " Madrid"]
    options = dict(count=3, draws=1, held_out=0.5)
    folder = atlas.save(tmp_path / "atlas")
    found = knowledge_units(tiny_lm, tokenizer, prompts, answers, NEURONS, atlas=folder, **options)
    assert [u["label"] for u in found.units] == [atlas.label(u["site"], u["unit"]).text for u in found.units]
    other = make_tiny_lm(seed=1)
    with pytest.raises(LatentError, match="is another model"):
        knowledge_units(other, tokenizer, prompts, answers, NEURONS, atlas=atlas, **options)
    with pytest.raises(attnlrp.TargetError, match="' Paris is' is 2 tokens"):
        knowledge_units(tiny_lm, tokenizer, prompts, [" Paris is", " Madrid"], NEURONS, **options)
    with pytest.raises(attnlrp.TargetError, match="non-empty string"):
        knowledge_units(tiny_lm, tokenizer, prompts, ["", " Madrid"], NEURONS, **options)


def test_unit_scores_come_in_prompt_order_from_passes_within_the_token_budget(tiny_lm, tokenizer, monkeypatch):
    from attnlrp.latent import readout

    prompts = ["A long sentence about the river, the bridge and the old town on the hill is", "Paris is", "The sky"]
    answers = [" here", " in", " is"]
    sites = resolve(tiny_lm, SITE)
    alone = [readout.unit_scores(tiny_lm, tokenizer, [p], [a], sites, "cp-lrp")[0] for p, a in zip(prompts, answers)]
    widths = [len(tokenizer(p).input_ids) for p in prompts]
    monkeypatch.setattr(readout, "TOKEN_BUDGET", 2 * widths[1] + 1)  # the two short prompts share a pass, alone
    passes, enter = [], readout.SiteRecorder.__enter__
    monkeypatch.setattr(readout.SiteRecorder, "__enter__", lambda self: passes.append(self) or enter(self))
    together = readout.unit_scores(tiny_lm, tokenizer, prompts, answers, sites, "cp-lrp", batch_size=8)
    assert len(passes) == 2, "the long prompt alone, the two short ones in one pass"
    for one, both in zip(alone, together):
        assert both["value"] == pytest.approx(one["value"], rel=1e-9)
        torch.testing.assert_close(both["relevance"][SITE], one["relevance"][SITE], rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(both["activation"][SITE], one["activation"][SITE], rtol=1e-7, atol=1e-10)


def test_ablation_drops_are_measured_from_the_clean_value_whatever_ks_are_given(tiny_lm, tokenizer):
    # without 0 in ks the drops were measured from the first k; a negative k ablated all units but |k|
    from attnlrp.evaluate.suites.facts import candidates

    items = list(itertools.islice(candidates(), 2))
    result = ablation_curves(tiny_lm, tokenizer, items, SITE, ks=(2, 8), progress=False)
    assert result["settings"]["ks"] == [0, 2, 8]
    clean = ablation_curves(tiny_lm, tokenizer, items, SITE, ks=(0,), progress=False)["curves"]["relevance"][0]
    assert result["curves"]["relevance"][0]["mean"] == pytest.approx(clean["mean"])
    with pytest.raises(LatentError, match=r"0 or more, not \[2, -1\]"):
        ablation_curves(tiny_lm, tokenizer, items, SITE, ks=(2, -1), progress=False)


def test_ablation_curves_start_at_the_clean_value_and_resume(tiny_lm, tokenizer, tmp_path, monkeypatch):
    from attnlrp.evaluate.suites.facts import candidates
    from attnlrp.latent import faithfulness

    items = list(itertools.islice(candidates(), 3))
    journal = tmp_path / "ablation.jsonl"
    result = ablation_curves(tiny_lm, tokenizer, items, SITE, ks=(0, 2, 8, 500), journal=journal, progress=False)
    assert result["settings"]["ks"] == [0, 2, 8, 128]
    curves = result["curves"]
    assert curves["relevance"][0]["mean"] == pytest.approx(curves["random"][0]["mean"])
    assert all(point["mean"] == 0 for point in (result["drops"][r][0] for r in result["drops"]))
    drop = result["drops"]["relevance"][-1]["mean"]
    assert drop == pytest.approx(curves["relevance"][0]["mean"] - curves["relevance"][-1]["mean"])
    assert curves["relevance"][-1]["mean"] == pytest.approx(curves["activation"][-1]["mean"])  # all units zeroed
    monkeypatch.setattr(faithfulness, "_curve", lambda *a: pytest.fail("a finished curve was computed again"))
    assert (
        ablation_curves(tiny_lm, tokenizer, items, SITE, ks=(0, 2, 8, 500), journal=journal, progress=False)["curves"]
        == curves
    )
    some = ablation_curves(tiny_lm, tokenizer, items[1:], SITE, ks=(0, 2, 8, 500), journal=journal, progress=False)
    assert some["items"] == 2 and {r["item"] for r in some["records"]} == {item.id for item in items[1:]}


# --- the corpus --------------------------------------------------------------------------------------------


def test_the_labelled_corpus_is_generated_with_a_fixed_seed(tmp_path):
    records = labelled_corpus()
    assert len(records) == 3000 and len({r.text for r in records}) == 3000
    assert {r.topic for r in records} == set(TOPICS) and len(TOPICS) == 15
    assert labelled_corpus() == records and labelled_corpus(seed=1) != records
    assert list(read_corpus(write_corpus(records[:5], tmp_path / "c.jsonl"))) == records[:5]
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n', encoding="utf-8")
    with pytest.raises(LatentError, match='"text" string'):
        list(read_corpus(tmp_path / "bad.jsonl"))


# --- the command line --------------------------------------------------------------------------------------


def test_cli_collects_shows_cards_browses_and_steers(tiny_lm, tokenizer, corpus, tmp_path, monkeypatch, capsys):
    from attnlrp import cli

    monkeypatch.setattr(cli, "_load", lambda args: (tiny_lm, tokenizer))
    write_corpus(read_corpus(corpus[:16]), tmp_path / "corpus.jsonl")
    folder = tmp_path / "atlas"

    def call(*argv: str) -> str:
        assert cli.main(list(argv)) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    out = call("latent", "collect", "--corpus", str(tmp_path / "corpus.jsonl"), "--sites", SITE, "--output", str(folder),
               "--top-k", "3", "--batch-size", "8", "--quiet")  # fmt: skip
    assert "16 contexts" in out and FeatureAtlas.load(folder).complete
    out = call("latent", "card", "--atlas", str(folder), "--unit", f"{SITE}:5", "--html", str(tmp_path / "card.html"))
    assert f"{SITE}:5" in out and (tmp_path / "card.html").read_text(encoding="utf-8").count("attnlrp-view") >= 1
    attnlrp_card = FeatureAtlas.load(folder, model=tiny_lm, tokenizer=tokenizer).card(SITE, 5)  # collected with AttnLRP
    assert any("need not sum to the unit's relevance" in note for note in attnlrp_card.notes)
    out = call("latent", "browse", "--atlas", str(folder), "--html", str(tmp_path / "atlas.html"))
    assert "saved" in out and (tmp_path / "atlas.html").is_file()
    out = call("latent", "steer", "The capital of France is", "--unit", f"{SITE}:5", "--strengths", "0,40",
               "--max-new-tokens", "3")  # fmt: skip
    lines = [line for line in out.splitlines() if "|" in line]
    assert len(lines) == 2 and lines[0].split("|")[0].strip() == "0"
    assert cli.main(["latent", "card", "--atlas", str(folder), "--unit", f"{SITE}:999", "--html", "x.html"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli.main(["latent", "steer", "Hi", "--unit", "model.layers.9.mlp.down_proj:3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "model.layers.9.mlp.down_proj" in err
    twice = ["latent", "steer", "Hi", "--unit", f"{SITE}:3", "--unit", f"{SITE}:3", "--max-new-tokens", "1"]
    assert cli.main(twice) == 2  # as steer refuses a repeated unit
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"--unit {SITE}:3 is given twice" in err
    # shards collected by hand (no launcher) merge with `attnlrp merge`, as dataset runs do
    sharded = tmp_path / "sharded"
    for rank in (0, 1):
        call("latent", "collect", "--corpus", str(tmp_path / "corpus.jsonl"), "--sites", SITE, "--output",
             str(sharded), "--top-k", "3", "--batch-size", "8", "--quiet", "--shard", f"{rank}/2")  # fmt: skip
    assert call("merge", str(sharded)) == f"merged {sharded}\n"
    _same_atlas(FeatureAtlas.load(sharded), FeatureAtlas.load(folder))


def test_latent_steer_generates_as_many_tokens_by_default_as_generate_steered():
    # the command line generated 24 tokens where generate_steered and sweep generate 20
    from attnlrp import cli
    from attnlrp.latent.steer import generate_steered, sweep

    args = cli._parser().parse_args(["latent", "steer", "Hi", "--unit", "model.layers.0.mlp:3"])
    for function in (generate_steered, sweep):
        assert inspect.signature(function).parameters["max_new_tokens"].default == args.max_new_tokens == 20
