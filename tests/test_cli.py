"""The ``attnlrp`` command on the bundled model, in-process (the model is the session's, loaded once),
plus a smoke test of the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attnlrp
from attnlrp import Explanation, GenerationExplanation, cli

PROMPT = "The capital of France is"


@pytest.fixture
def run(smollm, monkeypatch, capsys):
    """main(argv) on the session's bundled model; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "_load", lambda args: smollm)

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def html_data(path: Path) -> dict:
    page = path.read_text(encoding="utf-8")
    assert "https://" not in page and "http://" not in page
    marker = '<script class="attnlrp-data" type="application/json">'
    start = page.index(marker) + len(marker)
    return json.loads(page[start : page.index("</script>", start)])


def test_explain_writes_json_and_html(run, tmp_path):
    code, out, err = run(
        "explain", PROMPT, "--no-color", "--json", str(tmp_path / "e.json"), "--html", str(tmp_path / "e.html")
    )
    assert code == 0, err
    exp = Explanation.load(tmp_path / "e.json")
    assert exp.target == " Paris", "the bundled model's top next token"
    assert exp.method == "attnlrp" and exp.model == "SmolLM2-135M-Instruct"
    assert exp.display == ["The", " capital", " of", " France", " is"]
    assert exp.value == pytest.approx(exp.logit) and 0 < exp.prob <= 1
    assert np.abs(exp.scores).max() > 0
    assert "' Paris'" in out and " France" in out and f"saved {tmp_path / 'e.html'}" in out
    assert "\x1b[" not in out
    data = html_data(tmp_path / "e.html")
    assert data["items"][0]["tokens"]["text"] == exp.display


def test_explain_target_contrast_and_method(run, tmp_path):
    code, _, err = run(
        "explain",
        PROMPT,
        "--target",
        " Paris",
        "--contrast",
        " Rome",
        "--method",
        "cp-lrp",
        "--no-color",
        "--json",
        str(tmp_path / "c.json"),
    )
    assert code == 0, err
    contrast = Explanation.load(tmp_path / "c.json")
    assert contrast.method == "cp-lrp"
    assert contrast.target == " Paris vs Rome" and contrast.target_id == 7042
    assert 0 < contrast.value < contrast.logit, "Paris beats Rome, by less than Paris's whole logit"
    # CP-LRP on a bias-free LLaMA conserves: the contrast's relevance sums to the logit difference
    assert contrast.total == pytest.approx(contrast.value, rel=2e-2)

    code, _, err = run(
        "explain", PROMPT, "--target", " London", "--contrast", "mean", "--no-color", "--json", str(tmp_path / "m.json")
    )
    assert code == 0, err
    mean = Explanation.load(tmp_path / "m.json")
    assert mean.target == " London vs mean" and mean.method == "attnlrp"


def test_explain_log_prob_of_the_target_or_the_top_token(run, tmp_path):
    # attnlrp.LogProb had no command-line option: the log-probability was explained from Python only
    code, _, err = run(
        "explain", PROMPT, "--target", " Rome", "--log-prob", "--no-color", "--json", str(tmp_path / "r.json")
    )
    assert code == 0, err
    rome = Explanation.load(tmp_path / "r.json")
    assert rome.target == "log p( Rome)" and rome.explained == {"kind": "log_prob", "token": rome.target_id}
    assert rome.value == pytest.approx(np.log(rome.prob), abs=1e-5)
    code, _, err = run("explain", PROMPT, "--log-prob", "--no-color", "--json", str(tmp_path / "top.json"))
    assert code == 0, err
    top = Explanation.load(tmp_path / "top.json")
    assert top.target == "log p( Paris)" and rome.value < top.value < 0


def test_explain_answer_with_words(run, tmp_path):
    code, out, err = run(
        "explain",
        PROMPT,
        "--answer",
        " Lutetia, of course.",
        "--words",
        "--top",
        "3",
        "--no-color",
        "--json",
        str(tmp_path / "a.json"),
        "--html",
        str(tmp_path / "a.html"),
    )
    assert code == 0, err
    exp = Explanation.load(tmp_path / "a.json")
    assert exp.unit == "token", "JSON keeps tokens; --words changes the views"
    assert exp.target == " Lutetia, of course."
    assert [name for name, _, _ in exp.segments] == ["prompt", "answer"]
    assert "".join(exp.display) == PROMPT + " Lutetia, of course."
    words = exp.words()
    assert len(words) < len(exp)
    data = html_data(tmp_path / "a.html")
    assert data["items"][0]["tokens"]["text"] == words.display
    assert " course" in out
    # --top ranks the prompt's words, as top() does: never the answer's own
    ranked = out.split("top 3 by |relevance| in the context before the answer:\n")[1].splitlines()[:3]
    assert [int(line.split()[0]) for line in ranked] == [i for _, _, i in words.top(3)]
    assert all(int(line.split()[0]) < words.context for line in ranked)


def test_generate(run, tmp_path):
    code, out, err = run(
        "generate",
        PROMPT,
        "--max-new-tokens",
        "3",
        "--no-color",
        "--json",
        str(tmp_path / "g.json"),
        "--html",
        str(tmp_path / "g.html"),
    )
    assert code == 0, err
    gen = GenerationExplanation.load(tmp_path / "g.json")
    assert gen.matrix.shape == (3, gen.prompt_length + 3) and gen.prompt_length == 5
    assert gen.generated[0] == " Paris"
    assert repr(gen) in out and "step 0: ' Paris'" in out and "step 2:" in out
    assert html_data(tmp_path / "g.html")["kind"] == "generation"


def test_jsonl_batch_resumes_after_an_interruption(run, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    specs = [
        "The capital of Italy is",
        {"prompt": "The capital of France is", "target": " Paris"},
        {"prompt": "Two plus two equals", "answer": " four"},
    ]
    prompts.write_text("\n".join(json.dumps(s) for s in specs) + "\n\n", encoding="utf-8")
    output = tmp_path / "results.jsonl"

    calls: list[list] = []
    real_explain = attnlrp.explain

    def recording_explain(model, tokenizer, inputs, **kwargs):
        calls.append(list(inputs))
        return real_explain(model, tokenizer, inputs, **kwargs)

    monkeypatch.setattr(attnlrp, "explain", recording_explain)

    code, out, err = run("explain", "--input", str(prompts), "--output", str(output), "--no-color")
    assert code == 0, err
    first = output.read_text(encoding="utf-8").splitlines()
    assert len(first) == 3
    records = [json.loads(line) for line in first]
    assert [r["index"] for r in records] == [0, 1, 2]
    results = [Explanation.from_dict(r) for r in records]
    assert results[0].display[-1] == " is" and results[1].target == " Paris"
    assert results[2].target == " four" and results[2].segments[-1][0] == "answer"
    assert "3 results in" in out and "(3 new, 0 already there)" in out
    assert [sorted(c) for c in calls] == [sorted([specs[0], specs[1]["prompt"], specs[2]["prompt"]])]

    # interrupted: the first result was written whole, the second only half
    output.write_text(first[0] + "\n" + first[1][: len(first[1]) // 2], encoding="utf-8")
    calls.clear()
    code, out, err = run("explain", "--input", str(prompts), "--output", str(output), "--no-color")
    assert code == 0, err
    # the missing prompts are explained in the batch they belong to (whole, so its numbers are the same)
    assert [sorted(c) for c in calls] == [sorted([specs[0], specs[1]["prompt"], specs[2]["prompt"]])]
    resumed = output.read_text(encoding="utf-8").splitlines()
    assert len(resumed) == 3
    assert resumed[0] == first[0], "a finished result is kept as it was"
    by_index = {json.loads(line)["index"]: Explanation.from_dict(json.loads(line)) for line in resumed}
    assert sorted(by_index) == [0, 1, 2]
    for i in (1, 2):
        assert by_index[i].target == results[i].target and by_index[i].tokens == results[i].tokens
        np.testing.assert_allclose(
            by_index[i].scores, results[i].scores, rtol=1e-3, atol=1e-3 * np.abs(results[i].scores).max()
        )
    assert "(2 new, 1 already there)" in out

    # nothing left to do: nothing is computed and nothing changes
    calls.clear()
    code, out, _ = run("explain", "--input", str(prompts), "--output", str(output), "--no-color")
    assert code == 0 and calls == []
    assert output.read_text(encoding="utf-8").splitlines() == resumed
    assert "(0 new, 3 already there)" in out and "padding" not in out, "no batch ran: no padding to report"


def test_help_texts(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    for word in ("explain", "generate", "audit", "examples:", "SmolLM2-135M-Instruct"):
        assert word in top
    expected = {
        "explain": [
            "--target",
            "--contrast",
            "--answer",
            "--words",
            "--json",
            "--html",
            "--input",
            "--output",
            "--method",
            "--batch-size",
        ],
        "generate": ["--max-new-tokens", "--json", "--html", "--method"],
        "audit": ["--model", "--method"],
    }
    for command, options in expected.items():
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: attnlrp {command}" in text
        for option in options:
            assert option in text, f"{command} --help lacks {option}"


def test_explain_help_names_every_field_of_an_input_line(capsys):
    # "target_id" was read from each line but left out of the list
    from attnlrp.dataset import FIELDS

    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    fields = capsys.readouterr().out.split("Each line of --input")[1]
    assert all(f'"{field}"' in fields for field in FIELDS), fields


def test_audit_help_states_its_own_default_method(capsys):
    # it said "cp-lrp for image classifiers", as explain does, where audit() runs attnlrp on every model
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: attnlrp, image classifiers too; --check measures cp-lrp)" in text
    assert "explain_image" not in text


@pytest.mark.parametrize(
    "command",
    [
        ["explain"],
        ["generate"],
        ["audit"],
        ["merge"],
        ["evaluate"],
        ["latent"],
        ["latent", "collect"],
        ["latent", "card"],
        ["latent", "browse"],
        ["latent", "steer"],
    ],
)
def test_every_help_ends_with_examples_of_that_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    block = text[text.index("examples:") :].split("\n\n")[0].splitlines()[1:]
    assert block and all("attnlrp " in line for line in block), block
    assert any(line.strip().startswith("attnlrp " + " ".join(command)) for line in block), block


def test_errors_exit_2_with_a_message(run, tmp_path):
    def fails(*argv: str, says: str) -> None:
        code, _, err = run(*argv)
        assert code == 2, (argv, err)
        assert err.startswith("attnlrp: error: ") and says in err, err

    fails("explain", "   ", says="The prompt is empty")
    fails("generate", "", says="The prompt is empty")
    fails("explain", PROMPT, "--target", " Paris is lovely", says="is 3 tokens")
    fails(
        "explain",
        "--input",
        str(tmp_path / "missing.jsonl"),
        "--output",
        str(tmp_path / "o.jsonl"),
        says="missing.jsonl",
    )
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"fine"\n{"prompt": \n', encoding="utf-8")
    fails("explain", "--input", str(prompts), "--output", str(tmp_path / "o.jsonl"), says="p.jsonl:2: not valid JSON")
    prompts.write_bytes('"fine"\n"caf\u00e9"\n'.encode("latin-1"))
    fails(
        "explain",
        "--input",
        str(prompts),
        "--output",
        str(tmp_path / "o.jsonl"),
        says="p.jsonl:2: not UTF-8 text (byte 0xe9): save the file as UTF-8.",
    )
    prompts.write_text('"fine"\n{"text": "no prompt key"}\n', encoding="utf-8")
    fails("explain", "--input", str(prompts), "--output", str(tmp_path / "o.jsonl"), says='"prompt" key')
    fails("explain", "--input", str(prompts), says="--input needs --output")
    prompts.write_text('"fine"\n', encoding="utf-8")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"name": "something else"}\n', encoding="utf-8")
    fails("explain", "--input", str(prompts), "--output", str(foreign), says="is not an attnlrp result line")
    assert foreign.read_text(encoding="utf-8") == '{"name": "something else"}\n', "a foreign file is left alone"


def not_loaded(args):
    raise AssertionError("the model was loaded before the output paths were checked")


def test_an_output_path_that_cant_be_written_is_one_line_before_the_model_loads(monkeypatch, capsys, tmp_path):
    # --json /tmp (a folder) ended in an IsADirectoryError traceback, after the explanation was computed
    monkeypatch.setattr(cli, "_load", not_loaded)
    a_file = tmp_path / "a.txt"
    a_file.write_text("", encoding="utf-8")
    folder = tmp_path / "page.html"
    folder.mkdir()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"fine"\n', encoding="utf-8")
    for argv, says in [
        (["explain", PROMPT, "--json", str(tmp_path)], f"e.g. {tmp_path / 'explanation.json'}."),
        (["explain", PROMPT, "--html", str(folder)], f"e.g. {folder / 'explanation.html'}."),
        (["explain", "--input", str(prompts), "--output", str(tmp_path)], f"e.g. {tmp_path / 'results.jsonl'}."),
        (["generate", PROMPT, "--json", str(tmp_path)], f"e.g. {tmp_path / 'generation.json'}."),
        (["evaluate", "--suite", "facts", "--output", str(tmp_path)], f"e.g. {tmp_path / 'results.json'}."),
        (["latent", "card", "--atlas", "a", "--unit", "m:1", "--html", str(folder)], f"e.g. {folder / 'card.html'}."),
    ]:
        assert cli.main(argv) == 2, argv
        assert (
            capsys.readouterr().err
            == f"attnlrp: error: The output {argv[-1]} is a folder: give a file name in it, {says}\n"
        )
    assert cli.main(["explain", PROMPT, "--json", str(a_file / "e.json")]) == 2
    says = f"{a_file} is a file where the output path needs a folder: give another path."
    assert capsys.readouterr().err == f"attnlrp: error: {says}\n"


def test_the_folder_of_an_output_path_is_made_before_the_model_loads(monkeypatch, capsys, tmp_path):
    def no_model(args):
        raise FileNotFoundError("no model")

    monkeypatch.setattr(cli, "_load", no_model)
    page = tmp_path / "new" / "deeper" / "e.html"
    assert cli.main(["explain", PROMPT, "--html", str(page)]) == 2
    assert capsys.readouterr().err == "attnlrp: error: no model\n"
    assert page.parent.is_dir() and not page.exists(), "the folder is made, the page is written after the work"


def test_an_output_folder_that_cant_be_written_is_refused_before_the_model_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_load", not_loaded)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # root may write to a read-only folder: the permission is asked of os.access, answered here as for a user
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    assert cli.main(["explain", PROMPT, "--json", str(locked / "e.json")]) == 2
    assert capsys.readouterr().err == f"attnlrp: error: {locked}: permission denied: give a path you may write to.\n"


def test_other_path_errors_name_the_path():
    denied = PermissionError(13, "Permission denied", "/root/out.json")
    assert cli._path_error(denied) == "/root/out.json: permission denied: give a path you may write to."
    assert cli._path_error(NotADirectoryError(20, "Not a directory", "a.txt/e.json")) == (
        "Can't use a.txt/e.json: Not a directory; give another path."
    )
    assert cli._path_error(OSError("Can't load the tokenizer")) == "Can't load the tokenizer"


def test_usage_errors_exit_2(capsys):
    for argv, says in [
        (["explain"], "explain needs a prompt"),
        (["explain", "x", "--output", "x.jsonl"], "--output is the results file of --input prompts.jsonl; one prompt"),
        (["explain", "x", "--method", "nope"], "argument --method: Unknown LRP method 'nope': choose one of"),
        (["explain", "x", "--method", "integrated_gradients(steps=0)"], "needs at least one step, not 0."),
        (["generate", "x", "--method", "random(steps=2)"], "steps is for the methods ('integrated_gradients')"),
        (["audit", "--method", "integrated_gradients"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["generate", "x", "--max-new-tokens", "many"], "invalid int"),
        (["explain", "x", "--top", "-3"], "a number of tokens, 0 or more, not '-3'"),
        (["explain", "x", "--html", "x.png"], "x.png does not end in .html or .htm, and --html writes an HTML page"),
        (["generate", "x", "--html", "gen"], "give gen.html (a figure, PNG, SVG or PDF, is saved from Python"),
        (["latent", "card", "--atlas", "a", "--unit", "m:1", "--html", "card.svg"], "give card.html"),
        (["latent", "browse", "--atlas", "a", "--html", "a.json"], "give a.html"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert says in capsys.readouterr().err


def test_model_options_reach_load_model(monkeypatch, capsys):
    seen = []

    def fake_load(path_or_id=None, gguf_file=None, **kwargs):
        seen.append((path_or_id, gguf_file))
        raise FileNotFoundError(f"GGUF file {path_or_id}/{gguf_file} does not exist.")

    monkeypatch.setattr(attnlrp, "load_model", fake_load)
    assert cli.main(["audit", "--model", "some/folder", "--gguf-file", "m.gguf"]) == 2
    assert seen == [("some/folder", "m.gguf")]
    assert "some/folder/m.gguf does not exist" in capsys.readouterr().err
    assert cli.main(["explain", "hello"]) == 2
    assert seen[-1] == (None, None), "no --model: the bundled default"


#: Every command that loads a model, with its required arguments.
LOADING_COMMANDS = [
    ["explain", "hello"],
    ["generate", "hello"],
    ["audit"],
    ["evaluate", "--suite", "facts"],
    ["latent", "collect", "--corpus", "labelled", "--sites", "model.layers.*.mlp", "--output", "atlas"],
    ["latent", "card", "--atlas", "atlas", "--unit", "model.layers.0.mlp:3", "--html", "card.html"],
    ["latent", "steer", "hello", "--unit", "model.layers.0.mlp:3"],
]


@pytest.mark.parametrize("argv", LOADING_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_every_command_passes_dtype_and_device_to_load_model(argv, monkeypatch, capsys):
    # Through the real cli._load: `attnlrp evaluate` had no --dtype and crashed with an AttributeError.
    seen = []

    def fake_load(path_or_id=None, gguf_file=None, **kwargs):
        seen.append((path_or_id, kwargs))
        raise FileNotFoundError(f"no model at {path_or_id}")

    monkeypatch.setattr(attnlrp, "load_model", fake_load)
    assert cli.main([*argv, "--model", "m", "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert seen == [("m", {"dtype": "bfloat16", "device_map": "cpu"})]
    assert capsys.readouterr().err == "attnlrp: error: no model at m\n"


def test_latent_browse_reads_the_atlas_without_loading_a_model(monkeypatch, tmp_path, capsys):
    # It loaded the bundled model (seconds, or minutes for a big --model) and never used it.
    monkeypatch.setattr(attnlrp, "load_model", lambda *a, **k: pytest.fail("browse loaded a model"))
    assert cli.main(["latent", "browse", "--atlas", str(tmp_path / "none"), "--html", "a.html"]) == 2
    assert "holds no readable atlas" in capsys.readouterr().err


@pytest.mark.parametrize("argv", LOADING_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_quiet_silences_the_loading_bars_of_every_command(argv, monkeypatch):
    from transformers.utils import logging

    seen = []

    def fake_load(*args, **kwargs):
        seen.append((logging.is_progress_bar_enabled(), os.environ.get("TQDM_DISABLE")))
        raise FileNotFoundError("no model")

    monkeypatch.setattr(attnlrp, "load_model", fake_load)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert cli.main([*argv, "--quiet"]) == 2 and cli.main(argv) == 2
    assert seen == [(False, "1"), (True, None)], "bars off while loading with --quiet, and on again after"
    assert logging.is_progress_bar_enabled() and "TQDM_DISABLE" not in os.environ


def test_quiet_loading_prints_no_bar(tiny_lm, tokenizer, tmp_path, capsys):
    tiny_lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert cli.main(["audit", "--model", str(tmp_path)]) == 0
    assert "Loading weights" in capsys.readouterr().err
    assert cli.main(["audit", "--model", str(tmp_path), "--quiet"]) == 0
    assert "Loading weights" not in capsys.readouterr().err


def test_installed_script_smoke():
    script = Path(sys.executable).parent / "attnlrp"
    assert script.is_file(), f"the console script is missing: {script}"
    done = subprocess.run(
        [str(script), "generate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "usage: attnlrp generate" in done.stdout and "--max-new-tokens" in done.stdout
