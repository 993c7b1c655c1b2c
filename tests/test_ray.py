"""Ray Data: a Ray Dataset explained by actors that load the model once each gives the records a single-process
dataset run writes (on a local Ray with 2 CPUs)."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from conftest import build_tiny_lm

import attnlrp
from attnlrp.dataset import explain_dataset, read_lines
from attnlrp.errors import InputError, MethodError
from attnlrp.interop.ray_data import Explainer, explain_ray, lines_of, write_jsonl
from attnlrp.methods import IntegratedGradients

pytestmark = pytest.mark.cluster

#: Fields in the order the dataset's columns take (their first appearance), every line listing them so.
ROWS = [
    {"prompt": "The capital of France is", "id": 1},
    {"prompt": "Hi", "target": " there"},
    {"prompt": "Two plus two equals four and", "tag": "carried along"},
    {"prompt": "One"},
    {"prompt": "A long time ago in a galaxy far", "id": 2},
    {"prompt": "Rivers flow"},
    {"prompt": "The sea is", "target": " red", "contrast": " blue"},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ray")
    build_tiny_lm(tokenizer, dtype=torch.float32).save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "model")
    prompts = path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single(files):
    """The single-process output, with one thread (as each actor of num_cpus=1 has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = attnlrp.load_model(files / "model")
        explain_dataset(model, tokenizer, files / "prompts.jsonl", files / "single.jsonl", batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    return (files / "single.jsonl").read_bytes()


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_actors_write_what_one_process_writes(files, single, cluster):
    dataset = ray.data.read_json(str(files / "prompts.jsonl"))
    results = explain_ray(dataset, files / "model", batch_size=2, concurrency=2)
    write_jsonl(results, files / "ray.jsonl")
    assert (files / "ray.jsonl").read_bytes() == single
    records = [json.loads(line) for line in single.decode().splitlines()]
    assert [r["input"] for r in records] == ROWS and records[0]["id"] == 1
    assert all(len(r["scores"]) == len(r["tokens"]) for r in records)


def test_the_output_folder_is_made_before_the_work_runs(tmp_path):
    # the explanations of a lazy dataset ran in full, and then writing into a missing folder failed
    output = tmp_path / "new" / "folder" / "ray.jsonl"

    class Results:  # as explain_ray's dataset: the work runs as its rows are read
        def iter_rows(self):
            assert output.parent.is_dir(), "the rows were read before the output's folder was made"
            yield from ({"index": i, "record": json.dumps({"index": i})} for i in (1, 0))

    assert write_jsonl(Results(), output) == output
    assert output.read_text(encoding="utf-8") == '{"index": 0}\n{"index": 1}\n'
    with pytest.raises(InputError, match=r"is a folder: give a file name in it"):
        write_jsonl(Results(), tmp_path)


def test_rows_are_keyed_as_the_lines_of_a_file(files):
    # fields a row lacks arrive from Ray as None (another row has them): they are left out, as in the line
    rows = [{**{"target": None, "id": None, "contrast": None, "tag": None}, **row} for row in ROWS]
    assert [(x.index, x.spec, x.key) for x in lines_of(rows)] == [
        (x.index, x.spec, x.key) for x in read_lines(files / "prompts.jsonl")
    ]


def test_the_actor_class_explains_planned_batches_with_one_model(files, single):
    explainer = Explainer(str(files / "model"), "attnlrp")
    lines = read_lines(files / "prompts.jsonl")
    batches = [[lines[1], lines[3]], [lines[5], lines[6]]]
    out = explainer(
        {"lines": [json.dumps([{"index": x.index, "spec": x.spec, "key": x.key} for x in b]) for b in batches]}
    )
    assert out["index"].tolist() == [1, 3, 5, 6]
    want = [json.loads(line) for line in single.decode().splitlines()]
    for index, record in zip(out["index"], out["record"]):
        got = json.loads(record)
        assert got["input"] == want[index]["input"] and got["target"] == want[index]["target"]
        torch.testing.assert_close(
            torch.tensor(got["scores"]), torch.tensor(want[index]["scores"]), rtol=1e-4, atol=1e-6
        )


def test_a_configured_method_is_labelled_as_a_single_process_run_labels_it(files, tmp_path):
    # the records carried "integrated_gradients" alone, where explain_dataset writes the options in "method_label"
    method = IntegratedGradients(steps=2)
    model, tokenizer = attnlrp.load_model(files / "model")
    explain_dataset(model, tokenizer, files / "prompts.jsonl", tmp_path / "one.jsonl", method=method, progress=False)
    want = json.loads((tmp_path / "one.jsonl").read_text().splitlines()[1])
    explainer = Explainer(str(files / "model"), method)
    line = read_lines(files / "prompts.jsonl")[1]
    got = json.loads(explainer({"lines": [json.dumps([vars(line)])]})["record"][0])
    assert got["method_label"] == want["method_label"] == "integrated_gradients(steps=2)"
    assert got["method"] == want["method"] == "integrated_gradients"


def test_a_dataset_without_prompts_is_refused(files, cluster):
    with pytest.raises(InputError, match='no "prompt".*name the column "prompt"'):
        explain_ray(ray.data.from_items([{"text": "hello"}]), files / "model")
    with pytest.raises(InputError, match="batch_size and concurrency"):
        explain_ray(ray.data.from_items([{"prompt": "hello"}]), files / "model", concurrency=0)
    # an unknown method was found only in the actors, after each loaded the model: a Ray trace of 76 lines
    with pytest.raises(MethodError, match="Unknown LRP method 'lrp-x'"):
        explain_ray(ray.data.from_items([{"prompt": "hello"}]), files / "model", method="lrp-x")


def test_gpus_the_cluster_lacks_are_refused_not_waited_for(files, cluster):
    # Ray queued the actors until a GPU joined: on this CPU-only cluster, forever
    with pytest.raises(InputError, match="num_gpus=1, and the Ray cluster has 0 GPUs; pass num_gpus=0"):
        explain_ray(ray.data.from_items([{"prompt": "hello"}]), files / "model", num_gpus=1)


def test_a_message_field_other_messages_have_is_left_out(files):
    # Arrow gives every message the fields of all messages; a template reads name=None as a name "None"
    chat = [{"role": "system", "content": "Be brief.", "name": None}, {"role": "user", "content": "Hi", "name": "Ann"}]
    (line,) = lines_of([{"prompt": chat, "chat": True}])
    assert line.spec["prompt"] == [{"role": "system", "content": "Be brief."}, chat[1]]
