"""Dataset runs that never misalign: results keyed by content and id, every input field kept, the input's order
written, Ctrl-C one line; and the command line's options that mirror the API (on the tiny model, in-process)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import attnlrp
from attnlrp import Explanation, cli
from attnlrp.dataset import RunInterrupted, read_lines, run_file


@pytest.fixture
def run(tiny_lm, tokenizer, monkeypatch, capsys):
    """main(argv) on the tiny model; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "_load", lambda args: (tiny_lm, tokenizer))

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _write(path, specs) -> None:
    path.write_text("".join(json.dumps(s) + "\n" for s in specs), encoding="utf-8")


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def explained(monkeypatch):
    """The prompts each call of attnlrp.explain received, in order."""
    calls: list[list] = []
    real = attnlrp.explain

    def recording(model, tokenizer, inputs, **kwargs):
        calls.append(list(inputs))
        return real(model, tokenizer, inputs, **kwargs)

    monkeypatch.setattr(attnlrp, "explain", recording)
    return calls


def test_edits_deletions_and_reorders_never_misalign(run, tmp_path, explained):
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    specs = [
        {"prompt": "The capital of France is", "id": "fr", "source": "atlas"},
        "Two plus two equals",
        {"prompt": "The capital of Italy is", "target": " Rome", "topic": "geo"},
        "Three plus three is",
    ]
    _write(prompts, specs)
    code, out, err = run("explain", "--input", str(prompts), "--output", str(output), "--no-color", "--batch-size", "1")
    assert code == 0, err
    assert "(4 new, 0 already there)" in out
    first = _records(output)
    assert [r["index"] for r in first] == [0, 1, 2, 3] and first[0]["id"] == "fr"
    assert first[0]["input"] == specs[0] and first[2]["input"]["topic"] == "geo", "every input field is copied"
    assert first[1]["input"] == {"prompt": "Two plus two equals"}

    # lines 2 and 1 swap places, line 0 is edited (same id) and goes last, line 3 is deleted
    specs2 = [specs[2], specs[1], {"prompt": "The capital of Spain is", "id": "fr", "source": "atlas"}]
    _write(prompts, specs2)
    explained.clear()
    code, out, err = run("explain", "--input", str(prompts), "--output", str(output), "--no-color", "--batch-size", "1")
    assert code == 0, err
    assert explained == [["The capital of Spain is"]], "only the edited line"
    summary = "(1 new, 2 already there; 1 edited line(s) recomputed, 1 result(s) of deleted lines dropped, "
    assert summary + "reordered to the input's order)" in out
    second = _records(output)
    assert [r["input"] for r in second] == specs2[:1] + [{"prompt": specs2[1]}] + specs2[2:]
    assert [r["index"] for r in second] == [0, 1, 2]
    assert Explanation.from_dict(second[0]) == Explanation.from_dict(first[2]), "the kept results are the same"
    assert Explanation.from_dict(second[1]) == Explanation.from_dict(first[1])
    assert "".join(Explanation.from_dict(second[2]).display).endswith("Spain is")

    # an edit without an id is recomputed too (and reported as an edit, by its place)
    specs3 = [specs2[0], "Two plus two is", specs2[2]]
    _write(prompts, specs3)
    code, out, _ = run("explain", "--input", str(prompts), "--output", str(output), "--no-color", "--batch-size", "1")
    assert "(1 new, 2 already there; 1 edited line(s) recomputed)" in out
    assert [r["input"] for r in _records(output)][1] == {"prompt": "Two plus two is"}

    # ... also below a line inserted above it, which moves every place (it was reported as deleted)
    specs4 = ["A new first line", specs3[0], "Three plus three is", specs3[2]]
    _write(prompts, specs4)
    code, out, _ = run("explain", "--input", str(prompts), "--output", str(output), "--no-color", "--batch-size", "1")
    assert "(2 new, 2 already there; 1 edited line(s) recomputed)" in out, out


def test_the_same_line_twice_gets_two_results_and_ids_must_be_unique(tmp_path):
    path = tmp_path / "in.jsonl"
    _write(path, ["Hi", "Hi"])
    keys = [line.key for line in read_lines(path)]
    assert len(set(keys)) == 2
    _write(path, [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}])
    with pytest.raises(attnlrp.InputError, match="the id 1 is used twice"):
        read_lines(path)


def test_ctrl_c_keeps_what_is_done_and_says_how_to_resume(run, tmp_path, monkeypatch):
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, ["a b", "c d", "e f", "g h"])
    real = attnlrp.explain
    calls = []

    def interrupting(model, tokenizer, inputs, **kwargs):
        calls.append(inputs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, tokenizer, inputs, **kwargs)

    monkeypatch.setattr(attnlrp, "explain", interrupting)
    code, out, err = run("explain", "--input", str(prompts), "--output", str(output), "--batch-size", "2")
    assert code == 130
    assert err.strip() == "attnlrp: interrupted after 2 of 4; run the same command to resume", "one line, no traceback"
    assert len(_records(output)) == 2
    monkeypatch.setattr(attnlrp, "explain", real)
    code, out, _ = run("explain", "--input", str(prompts), "--output", str(output), "--batch-size", "2")
    assert code == 0 and "(2 new, 2 already there)" in out and len(_records(output)) == 4


def test_run_file_raises_run_interrupted_for_library_users(tmp_path):
    path = tmp_path / "in.jsonl"
    _write(path, ["a", "b"])

    def stop(chunk):
        raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        run_file(stop, read_lines(path), tmp_path / "out.jsonl", batch_size=1, progress=False)
    assert (info.value.done, info.value.total) == (0, 2) and isinstance(info.value, KeyboardInterrupt)
    with pytest.raises(attnlrp.InputError, match="batch_size must be 1 or more, not 0"):
        run_file(stop, read_lines(path), tmp_path / "out.jsonl", batch_size=0)


def test_chat_system_top_and_method_options(run, tiny_lm, tokenizer, tmp_path):
    code, out, err = run(
        "explain",
        "Where is Paris?",
        "--chat",
        "--system",
        "Be brief.",
        "--top",
        "3",
        "--method",
        "input_x_gradient",
        "--no-color",
        "--json",
        str(tmp_path / "e.json"),
    )
    assert code == 0, err
    exp = Explanation.load(tmp_path / "e.json")
    assert [s[0] for s in exp.segments][:2] == ["0:system", "1:user"] and exp.method == "input_x_gradient"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"}]
    np.testing.assert_allclose(
        exp.scores, attnlrp.explain(tiny_lm, tokenizer, messages, method="input_x_gradient").scores, rtol=1e-6
    )
    table = out.split("top 3 by |relevance|:\n")[1].split("saved")[0].splitlines()
    magnitudes = [abs(float(row.split()[-1])) for row in table]
    assert len(table) == 3 and magnitudes == sorted(magnitudes, reverse=True), "ranked by |relevance|"
    assert magnitudes[0] == pytest.approx(float(np.abs(exp.scores).max()), rel=1e-3)
    code, out, err = run("generate", "Hi", "--chat", "--max-new-tokens", "2", "--method", "gradient", "--no-color")
    assert code == 0, err and "GenerationExplanation(gradient" in out


def test_every_command_help_ends_with_examples(capsys):
    for command in ("explain", "generate", "audit", "evaluate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:\n  attnlrp " + command in text, command
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"attnlrp {attnlrp.__version__}"


def test_one_line_errors(run, tmp_path, tiny_lm, tokenizer, monkeypatch):
    def fails(*argv, says):
        code, _, err = run(*argv)
        assert code == 2 and err.count("\n") == 1 and says in err, err

    fails("explain", "Hi", "--target", " a", "--label", "b", says="--label is not for a causal-lm model")
    fails("explain", "Hi", "--target", " a", "--answer", " b c", says="give --answer without --target or --contrast")
    fails(
        "explain", "Hi", "--pair", "there", says="--pair is not for a causal-lm model (it takes --target, --target-id"
    )
    fails(
        "explain",
        "--input",
        str(tmp_path / "none.jsonl"),
        "--output",
        str(tmp_path / "o.jsonl"),
        says="Can't read the input file",
    )
    # dataset runs: what a line, the command line or the output file can get wrong
    lines = tmp_path / "lines.jsonl"
    _write(lines, ["a b c", "d e"])
    out = tmp_path / "o.jsonl"
    fails(
        "explain",
        "--input",
        str(lines),
        "--output",
        str(out),
        "--target",
        " x",
        "--chat",
        says="--target, --chat with --input",
    )
    fails("explain", "--input", str(lines), "--output", str(tmp_path), says="is a folder: give a file name in it")
    assert run("explain", "--input", str(lines), "--output", str(out), "--no-color")[0] == 0
    fails("explain", "--input", str(lines), "--output", str(out), "--method", "cp-lrp",
          says="holds results of another run (method 'attnlrp'; this run's is 'cp-lrp')")  # fmt: skip
    for bad, says in [
        ({"prompt": "x", "id": [1, 2]}, "lines.jsonl:2: an id is a string or a whole number, not [1, 2]"),
        ({"prompt": "x", "chat": "no"}, "lines.jsonl:2: \"chat\" is true or false, not 'no'"),
        ({"prompt": "x", "traget": " y"}, 'lines.jsonl:2: unknown field "traget"; did you mean "target"?'),
        ({"prompt": "x", "Label": "y"}, 'unknown field "Label"; did you mean "label"?'),
        (
            {"prompt": "x", "label": "positive"},
            'lines.jsonl:2: "label" is not for a causal-lm model (it takes "target", "target_id", "contrast", "answer"',
        ),
        ({"prompt": "x", "target": " not one token"}, "lines.jsonl:2: "),  # found in its batch by itself
    ]:
        _write(lines, ["a b", bad, "c d"])  # one batch
        fails("explain", "--input", str(lines), "--output", str(tmp_path / "p.jsonl"), says=says)
    fails("explain", "Hi", "--label", "positive", says="--label is not for a causal-lm model (it takes --target")
    fails("explain", "Hi", "--answer", "", says="answer")  # an empty answer or contrast is refused, not ignored
    fails("explain", "Hi", "--target", " a", "--contrast", "", says="non-empty")
    assert run("explain", "Hi", "--target-id", "5", "--json", str(tmp_path / "id.json"))[0] == 0
    assert Explanation.load(tmp_path / "id.json").target_id == 5
    fails("explain", "The capital", "--target", " Lutetia", says="(--target-id ")
    fails("merge", str(out), "--world", "0", says="1 or more, not 0")
    with pytest.raises(attnlrp.TargetError, match="Unsupported target True"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", target=True)
    monkeypatch.setattr(cli, "_load", lambda args: attnlrp.load_model(args.model, dtype=args.dtype))
    fails("audit", "--model", "/nothing/here", says="No model folder at /nothing/here")
    fails("audit", "--model", str(tmp_path), says="has no config.json")
    fails("audit", "--dtype", "float13", says="Unknown dtype 'float13'")
    with pytest.raises(attnlrp.InputError, match="batch_size must be 1 or more, not 0"):
        attnlrp.explain(tiny_lm, tokenizer, ["a", "b"], batch_size=0)
    with pytest.raises(attnlrp.InputError, match=r"Token id 49999 is outside the vocabulary \(0\.\.49151\)"):
        attnlrp.explain(tiny_lm, tokenizer, [1, 2, 49999])
    with pytest.raises(attnlrp.TargetError, match=r"returned a tensor of shape \(2,\), not one number"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", target=lambda logits: logits[-1, :2])
    with torch.device("meta"):
        meta = type(tiny_lm)(tiny_lm.config)
    with pytest.raises(attnlrp.InputError, match="on the meta device"):
        attnlrp.explain(meta, tokenizer, "Hi")


def test_a_resumed_batch_is_computed_whole_so_results_are_byte_identical(run, tmp_path, explained):
    prompts, output, fresh = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "fresh.jsonl"
    _write(prompts, ["a b c d e f", "g h", "i j k", "l"])
    assert run("explain", "--input", str(prompts), "--output", str(fresh), "--no-color")[0] == 0
    lines = fresh.read_text(encoding="utf-8").splitlines()
    output.write_text(lines[0] + "\n" + lines[1][:40], encoding="utf-8")  # interrupted mid-line
    explained.clear()
    code, out, _ = run("explain", "--input", str(prompts), "--output", str(output), "--no-color")
    assert code == 0 and len(explained) == 1 and sorted(explained[0]) == sorted(["a b c d e f", "g h", "i j k", "l"])
    assert output.read_bytes() == fresh.read_bytes(), "the same batch gives the same bytes"
    assert "(3 new, 1 already there); padding" in out


def test_fields_that_extend_a_known_one_are_metadata_carried_along(tmp_path):
    prompts = tmp_path / "in.jsonl"
    meta = {"answers": ["Paris"], "prompt_id": 7, "target_ids": [3], "labels": [1], "images": [], "chats": 2, "cat": 1}
    _write(prompts, [{"prompt": "x", **meta}])
    assert read_lines(prompts)[0].spec == {"prompt": "x", **meta}


def test_a_line_says_its_target_by_id(tiny_lm, tokenizer, tmp_path):
    # "target_id" was carried along as metadata, and the top token explained instead
    from attnlrp.dataset import explain_dataset

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, [{"prompt": "a b", "target_id": 42}, {"prompt": "c d", "target_id": "7"}])
    explain_dataset(tiny_lm, tokenizer, prompts, output, progress=False)
    assert [r["target_id"] for r in _records(output)] == [42, 7]
    _write(prompts, [{"prompt": "a b", "target_id": 42, "target": " x"}])
    with pytest.raises(attnlrp.InputError, match=r'"target_id" and "target" both say what to explain'):
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "clash.jsonl", progress=False)
    _write(prompts, [{"prompt": "a b", "target_id": 4.5}])
    with pytest.raises(attnlrp.InputError, match=r'"target_id" is a token or label id \(a whole number\), not 4.5'):
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "float.jsonl", progress=False)


def test_a_line_explains_the_log_probability_of_its_target(tiny_lm, tokenizer, tmp_path):
    from attnlrp.dataset import explain_dataset

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, [{"prompt": "a b", "target_id": 42, "log_prob": True}, {"prompt": "c d", "log_prob": False}])
    explain_dataset(tiny_lm, tokenizer, prompts, output, progress=False)
    first, second = (Explanation.from_dict(r) for r in _records(output))
    by_api = attnlrp.explain(tiny_lm, tokenizer, "a b", target=attnlrp.LogProb(42))
    assert first.explained == {"kind": "log_prob", "token": 42} and first.value == pytest.approx(by_api.value)
    assert second.explained["kind"] == "token", "false: the logit, as without the field"
    for line, says in [
        ({"prompt": "a b", "log_prob": "yes"}, "\"log_prob\" is true or false, not 'yes'."),
        (
            {"prompt": "a b", "log_prob": True, "contrast": " x"},
            '"log_prob" explains one token\'s (or label\'s) log-probability, and "contrast" another',
        ),
    ]:
        _write(prompts, [line])
        with pytest.raises(attnlrp.InputError) as info:
            explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "bad.jsonl", progress=False)
        assert str(info.value).startswith(f"{prompts}:1: {says}")


def test_a_rerun_with_other_method_options_or_another_input_is_refused(tiny_lm, tokenizer, tmp_path):
    from attnlrp.dataset import explain_dataset
    from attnlrp.methods import IntegratedGradients

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, ["a b", "c d"])
    explain_dataset(tiny_lm, tokenizer, prompts, output, method=IntegratedGradients(steps=2), progress=False)
    _write(prompts, ["a b", "c d", "e f"])  # steps=2's results were kept beside steps=4's, both "integrated_gradients"
    with pytest.raises(attnlrp.InputError, match=r"another run \(method 'integrated_gradients\(steps=2\)'"):
        explain_dataset(tiny_lm, tokenizer, prompts, output, method=IntegratedGradients(steps=4), progress=False)
    other = tmp_path / "other.jsonl"
    _write(other, ["g h", "i j"])  # another input into the same output: its results were dropped without a word
    with pytest.raises(attnlrp.InputError, match=r"holds 2 result\(s\), none of them of a line of this input"):
        explain_dataset(tiny_lm, tokenizer, other, output, method=IntegratedGradients(steps=2), progress=False)
    assert len(_records(output)) == 2


def test_method_options_on_the_command_line_are_the_labels_results_record(run, tiny_lm, tokenizer, tmp_path):
    # --method took a name only: integrated_gradients ran with its 32 steps, whatever the run needed
    from attnlrp.methods import IntegratedGradients

    code, _, err = run(
        "explain", "a b c", "--method", "integrated_gradients(steps=3)", "--json", str(tmp_path / "e.json")
    )
    assert code == 0, err
    by_api = attnlrp.explain(tiny_lm, tokenizer, "a b c", method=IntegratedGradients(steps=3))
    np.testing.assert_allclose(Explanation.load(tmp_path / "e.json").scores, by_api.scores, rtol=1e-6)
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, ["a b", "c d"])
    assert (
        run("explain", "--input", str(prompts), "--output", str(output), "--method", "integrated_gradients(steps=3)")[0]
        == 0
    )
    assert {r["method_label"] for r in _records(output)} == {"integrated_gradients(steps=3)"}
    code, _, err = run("explain", "--input", str(prompts), "--output", str(output), "--method", "integrated_gradients")
    assert (
        code == 2
        and "another run (method 'integrated_gradients(steps=3)'; this run's is 'integrated_gradients')" in err
    )


def test_a_rerun_in_another_dtype_is_refused_not_mixed_in(tiny_lm, tokenizer, tmp_path):
    from attnlrp.dataset import explain_dataset

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, ["a b", "c d"])
    explain_dataset(tiny_lm, tokenizer, prompts, output, progress=False)
    assert [r["dtype"] for r in _records(output)] == ["float64", "float64"]  # the tiny model's
    _write(prompts, ["a b", "c d", "e f"])
    half = copy.deepcopy(tiny_lm).to(torch.bfloat16)
    with pytest.raises(attnlrp.InputError, match=r"another run \(dtype 'float64'; this run's is 'bfloat16'\)"):
        explain_dataset(half, tokenizer, prompts, output, progress=False)
    assert len(_records(output)) == 2, "nothing was added"


def test_a_rerun_knows_its_model_by_its_weights_not_the_path_it_was_loaded_from(
    tiny_lm, make_tiny_lm, tokenizer, tmp_path
):
    # by the path string: another checkpoint saved as the same folder name was resumed into the same file (results
    # of two models mixed), and the same model given as ./tiny instead of tiny was refused
    from attnlrp.dataset import explain_dataset

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(prompts, ["a b", "c d"])
    explain_dataset(tiny_lm, tokenizer, prompts, output, progress=False)
    _write(prompts, ["a b", "c d", "e f"])
    tuned = make_tiny_lm(seed=1)
    tuned.name_or_path = tiny_lm.name_or_path
    with pytest.raises(attnlrp.InputError, match=r"another run \(model '.*', other weights; this run's is"):
        explain_dataset(tuned, tokenizer, prompts, output, progress=False)
    norms = copy.deepcopy(tiny_lm)  # a fine-tune of the norms alone was the same model: no matrix changed
    with torch.no_grad():
        for param in norms.parameters():
            if param.dim() == 1:
                param.mul_(3)
    with pytest.raises(attnlrp.InputError, match=r"another run \(model '.*', other weights; this run's is"):
        explain_dataset(norms, tokenizer, prompts, output, progress=False)
    moved = copy.deepcopy(tiny_lm)
    moved.name_or_path = "./elsewhere/tiny"
    summary = explain_dataset(moved, tokenizer, prompts, output, progress=False)
    assert (summary.new, summary.kept) == (1, 2)


def test_lines_that_fail_before_any_batch_are_named_and_an_answer_counts_its_tokens(tiny_lm, tokenizer, tmp_path):
    from attnlrp.dataset import explain_dataset

    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    for bad, says in (({"prompt": "   "}, "prompt is empty"), ({"prompt": [1, 2, 99999]}, "outside the vocabulary")):
        _write(prompts, ["a b", bad])  # measured for the batch plan: the error had no line
        with pytest.raises(attnlrp.InputError, match=rf"in\.jsonl:2: .*{says}"):
            explain_dataset(tiny_lm, tokenizer, prompts, output, progress=False)
    # the padding report and the batch plan counted a teacher-forced answer's tokens as none
    answer = " and then" * 10
    _write(prompts, [{"prompt": "Hi", "answer": answer}, "Hello there my good friend"])
    summary = explain_dataset(tiny_lm, tokenizer, prompts, output, batch_size=2, progress=False)
    widths = [
        len(tokenizer("Hi").input_ids) + len(tokenizer.encode(answer)),
        len(tokenizer("Hello there my good friend").input_ids),
    ]
    assert summary.tokens == 2 * max(widths)
    assert summary.padding == pytest.approx(1 - sum(widths) / (2 * max(widths)))
    # messages given as the prompt, with "chat": a Jinja trace before
    messages = [{"role": "user", "content": "Hi"}]
    _write(prompts, [{"prompt": messages, "chat": True}, {"prompt": messages, "system": "Be brief."}])
    first, second = _records(
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "chat.jsonl", progress=False).output
    )
    assert first["value"] == pytest.approx(attnlrp.explain(tiny_lm, tokenizer, messages).value)
    system = [{"role": "system", "content": "Be brief."}, *messages]
    assert second["value"] == pytest.approx(attnlrp.explain(tiny_lm, tokenizer, system).value)


def test_an_error_in_a_batch_names_the_line_that_raises_it(tiny_lm, tokenizer, tmp_path):
    from attnlrp.dataset import explain_dataset

    prompts = tmp_path / "in.jsonl"
    _write(prompts, ["a b", {"prompt": "c d", "target": " two tokens"}, "e f"])
    with pytest.raises(attnlrp.TargetError, match=r"in\.jsonl:2: .*two tokens"):
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "out.jsonl", progress=False)


def test_gradient_checkpointing_on_the_command_line_gives_the_same_results(run, tmp_path):
    prompts, plain, checkpointed = tmp_path / "in.jsonl", tmp_path / "plain.jsonl", tmp_path / "ckpt.jsonl"
    _write(prompts, ["a b c d", "e f"])
    assert run("explain", "--input", str(prompts), "--output", str(plain))[0] == 0
    assert run("explain", "--input", str(prompts), "--output", str(checkpointed), "--gradient-checkpointing")[0] == 0
    for a, b in zip(_records(plain), _records(checkpointed)):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-9, atol=1e-12)
    code, out, _ = run("explain", "a b c", "--gradient-checkpointing", "--top", "2", "--no-color")
    assert code == 0 and "top 2" in out
