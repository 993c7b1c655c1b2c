"""Big models across devices through the front end: a device map with CPU and disk offload gives the relevance of
the undispatched model, recordings inside the model are gathered where the inputs are, and a model split over
devices with nothing to move activations between them is refused with a clear error."""

from __future__ import annotations

import accelerate
import pytest
import torch
from conftest import build_tiny_lm

import attnlrp
from attnlrp.engine.devices import check_placement, execution_device, input_device, split_without_hooks
from attnlrp.errors import InputError
from attnlrp.tasks.model_identity import weight_sample, weights_digest

PROMPTS = ["The Eiffel Tower is located in the city of", "Rivers flow", "Two plus two equals four and"]

#: Every kind of placement on a CPU machine: in memory, offloaded to CPU memory, and offloaded to disk (the
#: embeddings and the LM head too, so the inputs and the target meet weights that are loaded only as they run).
DEVICE_MAP = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A tiny float64 LLaMA over the real tokenizer, saved as a model folder, and the model itself."""
    path = tmp_path_factory.mktemp("tiny")
    model = build_tiny_lm(tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def dispatched(saved, tmp_path_factory):
    path, _ = saved
    model, tokenizer = attnlrp.load_model(
        path, dtype=torch.float64, device_map=DEVICE_MAP, offload_folder=str(tmp_path_factory.mktemp("offload"))
    )
    return model, tokenizer


def _offloaded(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.is_meta}


def test_the_weights_really_are_offloaded(dispatched):
    model, _ = dispatched
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= _offloaded(model)
    assert hasattr(model.model.embed_tokens, "_hf_hook")
    # the inputs go where the embeddings run, not to the meta device their parameter is on
    assert input_device(model) == torch.device("cpu")
    assert execution_device(model.model.embed_tokens) == torch.device("cpu")


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "input_x_gradient", "integrated_gradients"])
def test_disk_offload_gives_the_relevance_of_the_undispatched_model(saved, dispatched, tokenizer, method):
    _, plain = saved
    model, _ = dispatched
    want = attnlrp.explain(plain, tokenizer, PROMPTS, method=method, batch_size=2)
    got = attnlrp.explain(model, tokenizer, PROMPTS, method=method, batch_size=2)
    for a, b in zip(got, want):
        assert a.target == b.target and a.value == b.value and a.logit == b.logit
        assert a.scores.tolist() == b.scores.tolist()  # the same numbers, bit for bit


def test_checkpointing_over_a_device_map(saved, dispatched, tokenizer):
    _, plain = saved
    model, _ = dispatched
    want = attnlrp.explain(plain, tokenizer, PROMPTS[0], method="cp-lrp")
    got = attnlrp.explain(model, tokenizer, PROMPTS[0], method="cp-lrp", gradient_checkpointing=True)
    assert got.scores.tolist() == want.scores.tolist()
    assert got.total == pytest.approx(got.value, rel=1e-6)  # CP-LRP conserves through the offloaded layers


def test_the_model_stays_dispatched(dispatched, tokenizer):
    model, _ = dispatched
    offloaded = _offloaded(model)
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    attnlrp.explain(model, tokenizer, PROMPTS[1])
    assert _offloaded(model) == offloaded
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards


def test_recorded_relevance_is_gathered_where_the_inputs_are(saved, dispatched, tokenizer):
    _, plain = saved
    model, _ = dispatched
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    recorded = {}
    for name, m in (("plain", plain), ("dispatched", model)):
        with attnlrp.Recorder(m, ["model.layers.*", "model.layers.*.mlp.down_proj"]) as layers, attnlrp.lrp(m):
            m(input_ids=ids).logits[0, -1].max().backward()
        recorded[name] = layers
    rec = recorded["dispatched"]
    assert rec.device == input_device(model) == torch.device("cpu")
    assert all(r.device == rec.device for r in rec.relevance.values())
    assert rec.relevance.keys() == recorded["plain"].relevance.keys()
    for path, r in rec.relevance.items():
        assert torch.equal(r, recorded["plain"].relevance[path]), path
    assert attnlrp.Recorder(model, "model.layers.*", device="meta").device == torch.device("meta")  # or where asked


def test_the_real_model_with_half_its_layers_on_disk(smollm, tmp_path):
    plain, tokenizer = smollm
    layers = plain.config.num_hidden_layers
    device_map = {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" if i < layers // 2 else "disk" for i in range(layers)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    model, _ = attnlrp.load_model(dtype=torch.float32, device_map=device_map, offload_folder=str(tmp_path))
    assert _offloaded(model)
    want = attnlrp.explain(plain, tokenizer, PROMPTS[0])
    got = attnlrp.explain(model, tokenizer, PROMPTS[0])
    assert got.target == want.target == " Paris"
    assert got.scores.tolist() == want.scores.tolist()


def _all_on_disk(path, offload):
    device_map = dict.fromkeys(DEVICE_MAP, "disk")
    model, _ = attnlrp.load_model(path, dtype=torch.float64, device_map=device_map, offload_folder=str(offload))
    assert not any(p.device.type != "meta" for p in model.parameters())
    return model


def test_the_weights_digest_reads_offloaded_weights(saved, dispatched, tokenizer, tmp_path):
    # the digest left out the parameters on the meta device: two models offloaded to disk had one digest (a
    # dataset run resumed or merged the results of one into the other's), and a model had another digest with a
    # device map than without
    path, plain = saved
    other = build_tiny_lm(tokenizer, seed=1)
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    on_disk = _all_on_disk(path, tmp_path / "offload")
    other_on_disk = _all_on_disk(tmp_path / "other", tmp_path / "other-offload")
    assert weights_digest(on_disk) == weights_digest(dispatched[0]) == weights_digest(plain)
    assert weights_digest(other_on_disk) == weights_digest(other) != weights_digest(plain)
    assert weight_sample(on_disk).keys() == dict(plain.named_parameters()).keys()


def test_the_weights_digest_reads_the_weights_a_hook_on_a_block_loads(saved, tmp_path):
    # accelerate.dispatch_model puts one hook on each offloaded block (model.layers.1), keyed under it
    path, plain = saved
    model = attnlrp.load_model(path, dtype=torch.float64)[0]
    model = accelerate.dispatch_model(model, device_map=DEVICE_MAP, offload_dir=str(tmp_path))
    assert model.model.layers[1].self_attn.q_proj.weight.is_meta
    assert weights_digest(model) == weights_digest(plain)


# --- bad input ---------------------------------------------------------------------------------------------


def test_weights_never_loaded_are_refused(tokenizer):
    model = build_tiny_lm(tokenizer)
    model.model.layers[1].to("meta")  # on the meta device, with no hook to load it
    with pytest.raises(InputError, match="meta device"):
        attnlrp.explain(model, tokenizer, PROMPTS[0])
    with pytest.raises(InputError, match=r"model.layers.1.self_attn.q_proj.weight is on the meta device"):
        weights_digest(model)  # not the digest of the weights left, which another model may share


def test_a_split_with_nothing_to_move_the_inputs_names_the_devices_and_the_fix():
    # A model put on several devices by hand (module.to(...), no accelerate hooks): the inputs can only go where
    # the embeddings are, and the layers elsewhere would meet tensors of another device.
    placed = {
        "model.embed_tokens": torch.device("cuda", 1),
        "model.layers.0": torch.device("cuda", 0),
        "model.layers.1": torch.device("cuda", 0),
        "lm_head": torch.device("cuda", 0),
    }
    problem = split_without_hooks(placed, "model.embed_tokens")
    assert "input embeddings (model.embed_tokens) are on cuda:1, where the inputs go" in problem
    assert "model.layers.0 is on cuda:0" in problem and "device_map" in problem and "model.to(" in problem
    assert split_without_hooks({k: torch.device("cpu") for k in placed}, "model.embed_tokens") is None


def test_a_model_on_one_device_passes_the_placement_check(tokenizer):
    check_placement(build_tiny_lm(tokenizer))
