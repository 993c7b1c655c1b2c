"""Faithfulness evaluation: the metrics on known inputs, each baseline against a by-hand computation (on the
tiny random LLaMA), the CLI's resume, and small fixed slices of every suite on the bundled model, where
AttnLRP must beat the random baseline."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
import torch

import attnlrp
from attnlrp import cli
from attnlrp.evaluate import metrics, perturbation_curves, runner, score_items, suites
from attnlrp.evaluate.suites import candidates, kept_items
from attnlrp.methods import REGISTRY, IntegratedGradients, Random, method_names
from attnlrp.tasks.causal_lm import prepare_batch

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]


# --- metrics on synthetic inputs -------------------------------------------------------------------


def test_ranking_and_counts():
    scores = [0.1, 3.0, -2.0, 3.0, 0.5]
    assert metrics.ranking(scores).tolist() == [1, 3, 4, 0, 2], "ties keep their order"
    assert metrics.ranking(scores, most_relevant_first=False).tolist() == [2, 0, 4, 1, 3]
    assert metrics.ranking(scores, exclude=(1,)).tolist() == [3, 4, 0, 2]
    assert metrics.counts(10, 5) == [0, 2, 4, 6, 8, 10]
    assert metrics.top_counts(12) == [1, 1, 2, 3, 6]
    assert metrics.top_counts(3, (0.5, 1.0)) == [2, 3]


def test_curve_areas_on_known_curves():
    steps = np.linspace(0, 1, 11)
    assert metrics.area(1 - steps) == pytest.approx(0.5)
    assert metrics.area(np.ones(11)) == pytest.approx(1.0)
    assert metrics.area(steps**2) == pytest.approx(1 / 3, abs=2e-3)
    # LeRF stays high while MoRF falls at once: the area between them is the whole square less a sliver
    morf, lerf = np.r_[1.0, np.zeros(10)], np.ones(11)
    assert metrics.abpc(morf, lerf) == pytest.approx(0.95)
    assert metrics.abpc(lerf, morf) == pytest.approx(-0.95)
    assert metrics.aopc(2.0, [2.0, 1.0, 0.0]) == pytest.approx(1.0)


def test_pointing_game_and_recovery():
    scores = [5.0, 1.0, 4.0, 3.0, 0.0]
    assert metrics.pointing_game(scores, [0]) == 1.0
    assert metrics.pointing_game(scores, [2, 3]) == 0.0
    assert metrics.pointing_game(scores, [2, 3], exclude=(0,)) == 1.0
    assert metrics.recovery_at_k(scores, [2, 3]) == 0.5, "top 2 = {0, 2}: one of two evidence tokens"
    assert metrics.recovery_at_k(scores, [2, 3], exclude=(0,)) == 1.0
    assert metrics.recovery_at_k(scores, [2, 3], k=4) == 1.0
    assert metrics.recovery_at_k(scores, [1, 2, 3], k=1) == 0.0
    with pytest.raises(ValueError, match="at least one evidence position"):
        metrics.recovery_at_k(scores, [])


def test_bootstrap_interval():
    values = np.random.default_rng(1).normal(3.0, 1.0, size=400)
    low, high = metrics.bootstrap_ci(values)
    assert low < values.mean() < high and high - low == pytest.approx(2 * 1.96 / 20, rel=0.25)
    assert metrics.bootstrap_ci(values) == (low, high), "seeded"
    assert metrics.bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    assert metrics.summary([0.0, 1.0])["n"] == 2


# --- baselines against by-hand computations --------------------------------------------------------


def test_unknown_method_lists_every_method(tiny_lm, tokenizer):
    with pytest.raises(ValueError, match="Unknown LRP method 'saliency'") as error:
        attnlrp.explain(tiny_lm, tokenizer, "Hi", method="saliency")
    for name in method_names():
        assert repr(name) in str(error.value)
    assert {c.name for c in REGISTRY.values() if not c.is_lrp} == {
        "gradient",
        "input_x_gradient",
        "integrated_gradients",
        "attention",
        "attention_rollout",
        "occlusion",
        "random",
    }
    with pytest.raises(ValueError, match="Unknown LRP method 'gradient'"):
        with attnlrp.lrp(tiny_lm, method="gradient"):
            pass
    with pytest.raises(ValueError, match="gradient_checkpointing is for the LRP methods"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi", method="occlusion", gradient_checkpointing=True)


def _grad(model, tokenizer, prompt):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeds).logits[0, -1]
    (grad,) = torch.autograd.grad(logits[logits.argmax()], embeds)  # no parameter .grad left on the shared model
    return embeds[0].detach(), grad[0]


def test_gradient_and_input_x_gradient_by_hand(tiny_lm, tokenizer):
    embeds, grad = _grad(tiny_lm, tokenizer, PROMPTS[0])
    saliency = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], method="gradient")
    ixg = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], method="input_x_gradient")
    np.testing.assert_allclose(saliency.scores, grad.norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ixg.scores, (embeds * grad).sum(-1).numpy(), rtol=1e-5, atol=1e-7)
    assert ixg.method == "input_x_gradient" and ixg.target == saliency.target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: eager attention's NaN at padding
def test_baselines_in_a_padded_batch_match_one_by_one(make_tiny_lm, tokenizer, dtype):
    model = make_tiny_lm(dtype=dtype)
    for method in ("input_x_gradient", "occlusion", "attention", "attention_rollout"):
        for side in ("left", "right"):
            together = attnlrp.explain(model, tokenizer, PROMPTS, method=method, padding_side=side)
            for prompt, exp in zip(PROMPTS, together):
                alone = attnlrp.explain(model, tokenizer, prompt, method=method)
                np.testing.assert_allclose(exp.scores, alone.scores, rtol=1e-4, atol=1e-6, err_msg=f"{method} {side}")
                assert exp.value == pytest.approx(alone.value, rel=1e-5)


def test_integrated_gradients_completeness(make_tiny_lm, tokenizer):
    # RMSNorm's epsilon sets how sharply f(a * e) moves near a = 0; with the bundled model's small epsilon the
    # path from the zero embedding is too rough for any affordable step count (see docs/evaluation.md)
    model = make_tiny_lm(rms_norm_eps=1e-2)
    batch = prepare_batch(model, tokenizer, PROMPTS, target=[" Paris", " Mary"])
    with torch.no_grad():
        gap = (batch.clean - batch.values({"tokens": torch.zeros_like(batch.inputs["tokens"])}, [0, 1])).numpy()
    errors = []
    for steps in (2, 32):
        exps = attnlrp.explain(
            model, tokenizer, PROMPTS, target=[" Paris", " Mary"], method=IntegratedGradients(steps=steps)
        )
        errors.append(np.abs([e.total for e in exps] - gap).max() / np.abs(gap).max())
    assert errors[1] < 1e-4, f"Σ IG = f(x) - f(0) with 32 steps (relative error {errors[1]:.1e})"
    assert errors[1] < errors[0] / 100, "the midpoint rule converges (error ~ 1/steps^2)"
    with pytest.raises(ValueError, match="at least one step"):
        IntegratedGradients(steps=0)


def test_baselines_agree_with_captum(tiny_lm, tokenizer):
    """Our gradient baselines equal Captum's implementations of the same methods on the same embeddings."""
    from captum.attr import InputXGradient, Occlusion, Saliency
    from captum.attr import IntegratedGradients as CaptumIG

    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    embeds = tiny_lm.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        target = int(tiny_lm(input_ids=ids).logits[0, -1].argmax())

    def forward(e):
        return tiny_lm(inputs_embeds=e).logits[:, -1, target]

    ours = {
        m: attnlrp.explain(tiny_lm, tokenizer, PROMPTS[1], method=m, target=target).scores
        for m in ("gradient", "input_x_gradient", "occlusion")
    }
    ours["ig"] = attnlrp.explain(
        tiny_lm, tokenizer, PROMPTS[1], method=IntegratedGradients(steps=16), target=target
    ).scores
    hidden = embeds.shape[-1]
    theirs = {
        "gradient": Saliency(forward).attribute(embeds.clone().requires_grad_(), abs=False)[0].norm(dim=-1),
        "input_x_gradient": InputXGradient(forward).attribute(embeds.clone().requires_grad_())[0].sum(-1),
        # one token's whole embedding zeroed at a time: every element of the window carries the full drop
        "occlusion": Occlusion(forward).attribute(
            embeds, sliding_window_shapes=(1, hidden), strides=(1, hidden), baselines=0.0
        )[0, :, 0],
        "ig": CaptumIG(forward)
        .attribute(embeds, baselines=torch.zeros_like(embeds), n_steps=16, method="riemann_middle")[0]
        .sum(-1),
    }
    for name, reference in theirs.items():
        np.testing.assert_allclose(ours[name], reference.detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


def test_occlusion_is_leave_one_out(tiny_lm, tokenizer):
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], method="occlusion")
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = tiny_lm.get_input_embeddings()(ids)
        manual = []
        for t in range(ids.shape[1]):
            occluded = embeds.clone()
            occluded[0, t] = 0
            manual.append(exp.value - float(tiny_lm(inputs_embeds=occluded).logits[0, -1, exp.target_id]))
    np.testing.assert_allclose(exp.scores, manual, rtol=1e-5, atol=1e-7)


def test_attention_baselines_by_hand(tiny_lm, tokenizer):
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    before = tiny_lm.config._attn_implementation
    attention = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[1], method="attention")
    rollout = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[1], method="attention_rollout")
    assert tiny_lm.config._attn_implementation == before, "eager attention only for the duration"
    tiny_lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            maps = [a[0].mean(0) for a in tiny_lm(ids, output_attentions=True).attentions]
    finally:
        tiny_lm.set_attn_implementation(before)
    np.testing.assert_allclose(attention.scores, maps[-1][-1].numpy(), rtol=1e-5, atol=1e-8)
    flow = torch.eye(ids.shape[1], dtype=maps[0].dtype)
    for a in maps:
        flow = (0.5 * a + 0.5 * torch.eye(len(a), dtype=a.dtype)) @ flow
    np.testing.assert_allclose(rollout.scores, flow[-1].numpy(), rtol=1e-5, atol=1e-8)
    assert rollout.total == pytest.approx(1.0) and attention.total == pytest.approx(1.0)


def test_random_is_seeded(tiny_lm, tokenizer):
    first, second = attnlrp.explain(tiny_lm, tokenizer, [PROMPTS[0], PROMPTS[0]], method="random")
    other = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], method=Random(seed=1))
    longer = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[1], method="random")
    np.testing.assert_array_equal(first.scores, second.scores)
    assert not np.allclose(first.scores, other.scores)
    assert not np.allclose(first.scores, longer.scores[: len(first)])


# --- perturbation curves ---------------------------------------------------------------------------


def test_perturbation_curves_by_hand(tiny_lm, tokenizer):
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0])
    target, n = exp.target_id, len(exp)
    order = np.argsort(-exp.scores, kind="stable")
    embed = tiny_lm.get_input_embeddings()
    ids = torch.tensor([exp.token_ids])

    def value(embeds=None, input_ids=None) -> float:
        with torch.no_grad():
            out = tiny_lm(inputs_embeds=embeds) if input_ids is None else tiny_lm(input_ids)
        return float(out.logits[0, -1, target])

    (zero,) = perturbation_curves(tiny_lm, tokenizer, [exp.token_ids], [target], [exp.scores], steps=n)
    assert len(zero.morf) == len(zero.lerf) == n + 1
    assert zero.clean == zero.morf[0] == zero.lerf[0] == pytest.approx(exp.value)
    with torch.no_grad():
        top2 = embed(ids)
        top2[0, order[:2]] = 0
    assert zero.morf[2] == pytest.approx(value(top2), rel=1e-6)
    assert zero.morf[-1] == zero.lerf[-1] == pytest.approx(value(torch.zeros_like(top2)), rel=1e-6)
    assert zero.comprehensiveness == pytest.approx(np.mean([exp.value - zero.morf[c] for c in metrics.top_counts(n)]))

    (removed,) = perturbation_curves(
        tiny_lm, tokenizer, [exp.token_ids], [target], [exp.scores], steps=n, mode="remove"
    )
    kept = [t for p, t in enumerate(exp.token_ids) if p not in set(order[-2:])]
    assert removed.lerf[2] == pytest.approx(value(input_ids=torch.tensor([kept])), rel=1e-6)

    (replaced,) = perturbation_curves(
        tiny_lm,
        tokenizer,
        [exp.token_ids],
        [target],
        [exp.scores],
        steps=n,
        mode="replace",
        neutral=" the",
        exclude_first=True,
    )
    swapped = ids.clone()
    swapped[0, 1:] = tokenizer.encode(" the")[0]
    assert replaced.morf[-1] == pytest.approx(value(input_ids=swapped), rel=1e-6), "all but the first replaced"
    with pytest.raises(ValueError, match="fixed targets"):
        perturbation_curves(tiny_lm, tokenizer, [exp.token_ids], [None], [exp.scores])


@pytest.mark.parametrize(
    "target",
    [attnlrp.Contrast(" the", "mean"), attnlrp.Contrast(" the", " a"), attnlrp.LogProb(" the"), " the"],
    ids=["contrast-mean", "contrast", "log-prob", "token"],
)
def test_an_explanation_writes_down_what_it_explained_and_perturbation_measures_that(
    tiny_lm, tokenizer, target, tmp_path
):
    # target_id is the plain logit's token: curves of a Contrast explanation measured the logit, not the contrast
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=target)
    exp.save(tmp_path / "e.json")
    explained = attnlrp.Explanation.load(tmp_path / "e.json").explained
    assert explained == exp.explained and explained["token"] == exp.target_id
    (curves,) = perturbation_curves(tiny_lm, tokenizer, [exp.token_ids], [explained], [exp.scores], steps=4)
    assert curves.clean == pytest.approx(exp.value)
    again = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=explained)
    assert again.value == pytest.approx(exp.value) and again.scores == pytest.approx(exp.scores)
    if not isinstance(target, str):
        (logit,) = perturbation_curves(tiny_lm, tokenizer, [exp.token_ids], [exp.target_id], [exp.scores], steps=4)
        assert logit.clean != pytest.approx(exp.value)


def test_the_curves_of_an_explained_answer_perturb_its_prompt(tiny_lm, tokenizer):
    # the explanation's tokens end with the answer, which the target appended a second time: clean was another value
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=attnlrp.Answer(" the city"))
    (curves,) = perturbation_curves(tiny_lm, tokenizer, [exp.token_ids], [exp.explained], [exp.scores], steps=4)
    assert curves.clean == pytest.approx(exp.value)
    n = exp.context
    (prompt,) = perturbation_curves(tiny_lm, tokenizer, [exp.token_ids[:n]], [exp.explained], [exp.scores[:n]], steps=4)
    assert prompt.morf == pytest.approx(curves.morf) and prompt.lerf == pytest.approx(curves.lerf)
    with pytest.raises(ValueError, match=f"an answer after {n} tokens, but tokens {n}.. are not that answer"):
        other = exp.token_ids[:n] + exp.token_ids[:2]
        perturbation_curves(tiny_lm, tokenizer, [other], [exp.explained], [exp.scores], steps=4)


def test_an_explained_answer_and_a_callable_read_back_or_say_why_not(tiny_lm, tokenizer):
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=attnlrp.Answer(" the city"))
    again = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=exp.explained)
    assert again.target == exp.target and again.scores == pytest.approx(exp.scores)
    custom = attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=lambda logits: logits[-1, 5])
    assert custom.explained == {}
    with pytest.raises(attnlrp.TargetError, match="was a callable, which its file can't hold"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target=custom.explained)
    with pytest.raises(attnlrp.TargetError, match="is not a target an explanation wrote"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPTS[0], target={"kind": "logit", "token": 5})


# --- the CLI: results, report, resume ---------------------------------------------------------------


def test_cli_evaluate_resumes(smollm, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_load", lambda args: smollm)
    scored: list[tuple[str, int]] = []
    real = runner.score_items

    def counting(model, tokenizer, items, method, *args):
        scored.append((method.label, len(items)))  # the configured method, under its label
        return real(model, tokenizer, items, method, *args)

    monkeypatch.setattr(runner, "score_items", counting)
    bars: list[tuple[int, int]] = []  # (completed, total) of each progress bar at its start

    class RecordingProgress(runner.Progress):
        def add_task(self, description, **kwargs):
            bars.append((kwargs["completed"], kwargs["total"]))
            return super().add_task(description, **kwargs)

    monkeypatch.setattr(runner, "Progress", RecordingProgress)
    output = tmp_path / "agreement.json"
    argv = [
        "evaluate",
        "--suite",
        "agreement",
        "--methods",
        "attnlrp,random",
        "--limit",
        "4",
        "--output",
        str(output),
        "--quiet",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "agreement: 4 items kept of" in out and "attnlrp" in out and "saved" in out
    assert sorted(scored) == [("attnlrp", 4), ("random", 4)]
    results = json.loads(output.read_text())
    assert results["kept"] == 4 and results["methods"] == ["attnlrp", "random"]
    assert results["settings"]["dtype"] == "float32", "a run in another dtype is another run"
    assert results["metrics"]["attnlrp"]["pointing"]["n"] == 4
    page = output.with_suffix(".html").read_text()
    assert "data:image/png;base64," in page and "http" not in page
    assert "<th>suite</th><td>agreement</td>" in page and "<th>exclude_first</th><td>–</td>" in page
    assert "{'suite'" not in page, "the settings are a table, not a Python dict"
    assert (tmp_path / "agreement-metrics.png").read_bytes()[:4] == b"\x89PNG"

    # an interruption: the last record torn, one more lost; the rerun redoes exactly those two
    journal = output.with_suffix(".jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) == 9 and json.loads(lines[0])["settings"]["suite"] == "agreement"
    journal.write_text("\n".join(lines[:-2]) + "\n" + lines[-1][:20])
    scored.clear()
    assert cli.main(argv) == 0
    assert scored == [("random", 2)]
    assert bars == [(0, 2), (1, 2)], "the resumed run's progress bar starts at the (batch, method) pair done"
    again = json.loads(output.read_text())["metrics"]
    assert all(again[m]["pointing"] == results["metrics"][m]["pointing"] for m in ("attnlrp", "random"))

    scored.clear()
    assert cli.main(argv[:-1] + ["--methods", "attnlrp,random,input_x_gradient,attnlrp", "--quiet"]) == 0
    assert scored == [("input_x_gradient", 4)], "a new method: only it runs (and a repeated one, once)"

    assert cli.main(argv[:-1] + ["--steps", "5", "--quiet"]) == 0, "the curves' steps are not this suite's"
    assert cli.main(argv[:-1] + ["--seed", "1", "--quiet"]) == 2
    assert "holds a run with other settings (seed: 0 there, 1 now)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--suite", "facts", "--methods", " , "])
    assert "give at least one method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--suite", "facts", "--methods", "attnlrp,shap"])
    assert "Unknown LRP method 'shap'" in capsys.readouterr().err


def test_methods_with_options_are_read_whole_from_the_command_line(capsys):
    # "integrated_gradients(steps=8),random" was split inside the parentheses, and the options were dropped
    from attnlrp.evaluate.command import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--suite", "facts", "--methods", "integrated_gradients(steps=8), random(seed=1),attnlrp"])
    assert args.methods == ["integrated_gradients(steps=8)", "random(seed=1)", "attnlrp"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--suite", "facts", "--methods", "integrated_gradients(steps=0),random"])
    assert "needs at least one step, not 0" in capsys.readouterr().err


def test_one_method_name_is_a_list_of_one_and_other_tasks_are_refused(tiny_lm, tokenizer, tmp_path):
    # the string was read letter by letter ("Unknown LRP method 'a'")
    one = runner.run_suite(tiny_lm, tokenizer, "agreement", "random", 2, tmp_path / "one.json", progress=False)
    assert one["methods"] == ["random"]
    with pytest.raises(attnlrp.InputError, match="Give at least one method"):
        runner.run_suite(tiny_lm, tokenizer, "agreement", [], 2, tmp_path / "none.json")
    from transformers import LlamaForSequenceClassification

    classifier = LlamaForSequenceClassification(tiny_lm.config).eval()  # an IndexError deep in the suite before
    with pytest.raises(attnlrp.InputError, match="is a 'sequence-classification' model, and the evaluation measures"):
        runner.run_suite(classifier, tokenizer, "facts", ["random"], 2, tmp_path / "classifier.json")
    assert not (tmp_path / "classifier.jsonl").exists()


@pytest.mark.parametrize(
    "change,says",
    [
        ({"suite": "bogus"}, "Unknown suite 'bogus': choose one of 'needle'"),
        ({"limit": 0}, "limit is how many items to evaluate: 1 or more, not 0"),
        ({"suite": "perturbation", "steps": 0}, "The perturbation suite needs steps >= 1 (not 0)"),
        ({"suite": "perturbation", "mode": "blur"}, "(not 'blur')"),
        ({"suite": "needle", "lengths": [5, 128]}, "must be 32 tokens or more (the needle, a distractor"),
    ],
)
def test_a_run_that_cant_be_done_is_refused_before_its_journal_is_written(tiny_lm, tokenizer, tmp_path, change, says):
    options = {"suite": "facts", "methods": ["attnlrp"], "limit": 2, "output": tmp_path / "run.json", **change}
    with pytest.raises(attnlrp.InputError) as info:
        runner.run_suite(tiny_lm, tokenizer, **options)
    assert says in str(info.value)
    assert not list(tmp_path.iterdir()), "nothing written: the corrected run starts afresh"


def test_configured_methods_run_as_configured_and_are_kept_apart(smollm, tmp_path, monkeypatch):
    # IntegratedGradients(steps=1) ran the default 32 steps, and a rerun with steps=8 read the journal's numbers
    from attnlrp.methods import IntegratedGradients

    model, tokenizer = smollm
    methods = [IntegratedGradients(steps=1), IntegratedGradients(steps=2), "integrated_gradients"]
    results = runner.run_suite(model, tokenizer, "facts", methods, 1, tmp_path / "run.json", progress=False)
    labels = ["integrated_gradients(steps=1)", "integrated_gradients(steps=2)", "integrated_gradients"]
    assert results["methods"] == labels
    shares = [results["metrics"][label]["first_share"]["mean"] for label in labels]
    assert len(set(shares)) == 3, shares
    (item,) = kept_items(model, tokenizer, "facts", 1)[0]
    (direct,) = score_items(model, tokenizer, [item], IntegratedGradients(steps=1), curves=False)
    assert shares[0] == pytest.approx(direct["first_share"])
    monkeypatch.setattr(runner, "score_items", lambda *a, **k: pytest.fail("a finished method was run again"))
    again = runner.run_suite(model, tokenizer, "facts", methods[1:2], 1, tmp_path / "run.json", progress=False)
    assert again["metrics"][labels[1]]["first_share"]["mean"] == shares[1]


def test_filtering_does_not_depend_on_its_batches(smollm, monkeypatch):
    model, tokenizer = smollm
    assert suites._length_batches([30, 10, 20, 10]) == [[1, 3, 2, 0]]
    shared = kept_items(model, tokenizer, "needle", 4, lengths=(128, 256))  # haystacks share forwards
    monkeypatch.setattr(suites, "FILTER_TOKENS", 40)
    assert suites._length_batches([30, 10, 20, 10]) == [[1, 3], [2], [0]], "rows x longest within the budget"
    single = kept_items(model, tokenizer, "needle", 4, lengths=(128, 256))  # one haystack per forward
    assert [i.id for i in shared[0]] == [i.id for i in single[0]] and shared[1] == single[1] >= 4
    assert {i.group for i in single[0]} == {"128", "256"}


def test_needle_groups_in_length_order():
    items = [suites.Item(f"needle:{n}", "p", " a", ((0, 1),), group=g) for n, g in enumerate(["256", "1024", "128"])]
    records = {(item.id, "random"): {"pointing": 1.0} for item in items}
    results = runner.summarise({"lengths": [128, 256, 1024]}, ["random"], items, 3, records)
    assert list(results["groups"]) == ["128", "256", "1024"], "an ordered axis, whatever item came first"


# --- fixed slices of each suite on the bundled model: AttnLRP beats random --------------------------


def _means(smollm, suite: str, limit: int, key: str, **options) -> dict[str, float]:
    model, tokenizer = smollm
    items, tried = kept_items(model, tokenizer, suite, limit, lengths=options.pop("lengths", (128,)))
    assert len(items) == limit and tried >= limit
    return {
        m: float(np.mean([r[key] for r in score_items(model, tokenizer, items, m, **options)]))
        for m in ("attnlrp", "random")
    }


@pytest.mark.parametrize("suite, limit, margin", [("facts", 20, 0.3), ("ioi", 8, 0.5), ("agreement", 8, 0.3)])
def test_attnlrp_beats_random_on_ground_truth(smollm, suite, limit, margin):
    means = _means(smollm, suite, limit, "pointing", curves=False)
    assert means["attnlrp"] > means["random"] + margin, f"{suite}: pointing game {means}"


def test_attnlrp_beats_random_on_the_needle(smollm):
    means = _means(smollm, "needle", 2, "pointing", curves=False, lengths=(128,))
    assert means == {"attnlrp": 1.0, "random": 0.0}


def test_attnlrp_beats_random_on_abpc(smollm):
    means = _means(smollm, "perturbation", 4, "abpc", curves=True, steps=5)
    assert means["attnlrp"] > means["random"] + 2.0, f"ABPC {means}"


def _without_times(results: dict) -> dict:
    """The results less what the clock gives (seconds per item, the run's elapsed time)."""

    def untimed(by_method: dict) -> dict:
        return {name: {k: v for k, v in m.items() if k != "seconds"} for name, m in by_method.items()}

    groups = {group: untimed(by_method) for group, by_method in results["groups"].items()}
    return {
        **{k: v for k, v in results.items() if k != "elapsed_s"},
        "metrics": untimed(results["metrics"]),
        "groups": groups,
    }


def test_shards_split_the_work_and_one_process_summarises_them(tiny_lm, tokenizer, tmp_path, monkeypatch):
    # evaluate under a launcher was refused: every process would have run every item into one journal
    def first_items(model, tokenizer, suite, limit, seed, lengths, centered):  # right or not: a random model
        return list(itertools.islice(candidates(suite, tokenizer, seed, lengths, centered), limit)), limit

    monkeypatch.setattr(runner, "kept_items", first_items)
    options = {"suite": "facts", "methods": ["random", "gradient"], "limit": 40, "progress": False}
    alone = runner.run_suite(tiny_lm, tokenizer, output=tmp_path / "alone" / "e.json", **options)
    for rank in range(2):  # no process group: each writes its journal, and none summarises
        assert runner.run_suite(tiny_lm, tokenizer, output=tmp_path / "e.json", shard=(rank, 2), **options) is None
    shards = [runner.read_journal(tmp_path / f"e.jsonl.shard-{r}-of-2", alone["settings"])[0] for r in range(2)]
    assert shards[0] and shards[1] and not shards[0].keys() & shards[1].keys()
    assert len(shards[0]) + len(shards[1]) == 2 * alone["kept"] and not (tmp_path / "e.json").exists()
    # one process resumes from the shards, explains nothing and summarises them as a run alone does
    monkeypatch.setattr(runner, "score_items", lambda *a, **k: pytest.fail("explained again"))
    gathered = runner.run_suite(tiny_lm, tokenizer, output=tmp_path / "e.json", **options)
    assert _without_times(gathered) == _without_times(alone)
    assert json.loads((tmp_path / "e.json").read_text())["kept"] == alone["kept"]


def test_a_model_that_gets_no_item_right_is_refused_after_a_bounded_search(tiny_lm, tokenizer, tmp_path):
    # the ioi stream never ends: a random model, right on few or none of its items, used to search it forever
    options = {"suite": "ioi", "methods": ["attnlrp"], "limit": 2, "output": tmp_path / "run.json"}
    with pytest.raises(attnlrp.InputError, match=r"got none of the 100 ioi items tried right"):
        runner.run_suite(tiny_lm, tokenizer, **options)
    assert not list(tmp_path.iterdir()), "nothing written: the corrected run starts afresh"
    assert runner.Journal(tmp_path / "new" / "run.jsonl", {"suite": "facts"}).path.is_file(), "its folder is made"


def test_an_output_named_like_the_journal_or_the_report_is_refused(tiny_lm, tokenizer, tmp_path, capsys):
    # --output x.jsonl was its own journal and --output x.html its own report: one file overwrote the other
    for name in ("e.jsonl", "e.html"):
        with pytest.raises(SystemExit) as info:
            cli.main(["evaluate", "--suite", "facts", "--output", str(tmp_path / name)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "one would overwrite another: give a .json path, e.g." in err and str(tmp_path / "e.json") in err
    with pytest.raises(attnlrp.InputError, match=r"both the results and their journal .*e\.g\. .*run\.json"):
        runner.run_suite(tiny_lm, tokenizer, "facts", ["random"], 2, tmp_path / "run.jsonl")
    assert not list(tmp_path.iterdir()), "refused before anything is written"
