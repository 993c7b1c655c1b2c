"""Data-parallel dataset runs under torchrun (2 processes, gloo, one thread each): the merged output is byte for
byte the single-process output, with an uneven split and after a killed shard resumes; merge errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_lm

from attnlrp.dataset import explain_dataset
from attnlrp.errors import InputError
from attnlrp.sharding import assign, current_shard, local_gpu, merge, process_device, shard_path

PROMPTS = [
    "The capital of France is",
    "Hi",
    "Two plus two equals four and",
    "One",
    "A long time ago in a galaxy far",
    "Rivers flow",
    "The sea is",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_lm(tokenizer, dtype=__import__("torch").float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _attnlrp(*argv: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [*launcher, "-m", "attnlrp", *argv] if launcher else [sys.executable, "-m", "attnlrp", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _torchrun() -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def _one_and_two_processes(folder, tmp_path, launcher: tuple[str, ...]) -> tuple[tuple[str, ...], bytes]:
    """Explain PROMPTS in one process and in two under ``launcher``; (the command's options, the output of one
    process, which the merged output of two equals)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    common = ("explain", "--model", str(folder), "--input", str(prompts), "--batch-size", "2", "--no-color")
    single = _attnlrp(*common, "--output", str(tmp_path / "single.jsonl"))
    assert single.returncode == 0, single.stderr
    multi = _attnlrp(*common, "--output", str(tmp_path / "multi.jsonl"), launcher=launcher)
    assert multi.returncode == 0, multi.stderr
    expected = (tmp_path / "single.jsonl").read_bytes()
    assert (tmp_path / "multi.jsonl").read_bytes() == expected
    return common, expected


def test_two_processes_write_what_one_process_writes(folder, tmp_path):
    common, expected = _one_and_two_processes(folder, tmp_path, _torchrun())
    shards = [shard_path(tmp_path / "multi.jsonl", rank, 2) for rank in range(2)]
    sizes = [len(s.read_text().splitlines()) - 1 for s in shards]
    assert sum(sizes) == len(PROMPTS) and sizes[0] != sizes[1], "4 batches of 2, 2, 2 and 1 prompts: uneven"

    # a killed process: its shard lost its last result (and the merged file is gone); the same command resumes
    lines = shards[1].read_text().splitlines()
    shards[1].write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30], encoding="utf-8")
    (tmp_path / "multi.jsonl").unlink()
    resumed = _attnlrp(*common, "--output", str(tmp_path / "multi.jsonl"), launcher=_torchrun())
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "multi.jsonl").read_bytes() == expected

    # merged by hand, without a process group
    (tmp_path / "multi.jsonl").unlink()
    by_hand = _attnlrp("merge", str(tmp_path / "multi.jsonl"))
    assert by_hand.returncode == 0, by_hand.stderr and (tmp_path / "multi.jsonl").read_bytes() == expected


def test_accelerate_launch_writes_what_one_process_writes(folder, tmp_path):
    # the accelerate launcher of docs/scaling.md; without --multi_gpu it starts one process, on CPUs too
    accelerate = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2")
    accelerate += ("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    _one_and_two_processes(folder, tmp_path, accelerate)
    assert all(shard_path(tmp_path / "multi.jsonl", rank, 2).is_file() for rank in range(2)), "two processes"


def test_a_process_whose_peer_failed_says_so_in_one_line(folder, tmp_path):
    # the healthy process printed gloo's trace ("Connection closed by peer") from the barrier before the merge
    prompts = tmp_path / "prompts.jsonl"
    lines = [*PROMPTS[:3], {"prompt": "abc", "target": " two tokens here"}]
    prompts.write_text("".join(json.dumps(p) + "\n" for p in lines), encoding="utf-8")
    common = ("explain", "--model", str(folder), "--input", str(prompts), "--batch-size", "1", "--quiet")
    failed = _attnlrp(*common, "--output", str(tmp_path / "out.jsonl"), launcher=_torchrun())
    assert failed.returncode != 0
    ours = [line for line in failed.stderr.splitlines() if line.startswith("attnlrp: error:")]
    assert len(ours) == 2 and "prompts.jsonl:4: Target ' two tokens here' is 3 tokens" in ours[0] + ours[1]
    assert any("Another process of this run stopped" in line for line in ours)
    assert "[rank0]: Traceback" not in failed.stderr and "[rank1]: Traceback" not in failed.stderr


def test_the_python_api_takes_a_shard(tiny_lm, tokenizer, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    alone = explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "alone.jsonl", batch_size=2, progress=False)
    assert alone.total == len(PROMPTS)
    for rank in (1, 0):  # written on "different machines", in any order
        explain_dataset(
            tiny_lm, tokenizer, prompts, tmp_path / "out.jsonl", batch_size=2, shard=(rank, 2), progress=False
        )
    assert not (tmp_path / "out.jsonl").exists(), "no process group: nothing to wait for, merge by hand"
    merge(tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "alone.jsonl").read_bytes()

    with pytest.raises(
        InputError, match=r"needs the 3 shards 0\.\.2 of a 3-process run, but found ranks \[0, 1\] of 2"
    ):
        merge(tmp_path / "out.jsonl", world=3)
    other = tmp_path / "other.jsonl"
    for rank, method in ((0, "attnlrp"), (1, "cp-lrp")):
        explain_dataset(
            tiny_lm, tokenizer, prompts, other, method=method, batch_size=2, shard=(rank, 2), progress=False
        )
    with pytest.raises(InputError, match=r"other settings than shard 0 \(method differ\)"):
        merge(other)
    # shards of one model loaded from two paths (machines that mount it elsewhere) merge; of two models, not
    moved, tuned = copy.deepcopy(tiny_lm), copy.deepcopy(tiny_lm)
    moved.name_or_path = "/mnt/b/tiny"
    with torch.no_grad():
        tuned.lm_head.weight.mul_(1.5)
    for name, second in (("moved", moved), ("tuned", tuned)):
        for rank, model in ((0, tiny_lm), (1, second)):
            explain_dataset(model, tokenizer, prompts, tmp_path / f"{name}.jsonl", batch_size=2, shard=(rank, 2),
                            progress=False)  # fmt: skip
    merge(tmp_path / "moved.jsonl")
    with pytest.raises(InputError, match=r"other settings than shard 0 \(weights differ\)"):
        merge(tmp_path / "tuned.jsonl")


def test_each_merge_error_names_the_shard_file_and_following_it_merges(tiny_lm, tokenizer, tmp_path):
    # "Rerun that shard with the same command" named no file, and a rerun into the shard file of another method
    # was refused: the advice is now to delete that file and run its rank again, which merges
    prompts, output = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    alone = tmp_path / "alone.jsonl"
    explain_dataset(tiny_lm, tokenizer, prompts, alone, batch_size=2, progress=False)

    def shard(rank: int, method: str = "attnlrp") -> None:
        explain_dataset(tiny_lm, tokenizer, prompts, output, method=method, batch_size=2, shard=(rank, 2),
                        progress=False)  # fmt: skip

    shard(0)
    one = shard_path(output, 1, 2)
    with pytest.raises(InputError, match=rf"run the same command as rank 1 of 2 \(e\.g\. RANK=1 WORLD_SIZE=2 .*shard=\(1, 2\), which writes {one.name}\)"):  # fmt: skip
        merge(output)
    shard(1, method="cp-lrp")
    with pytest.raises(InputError, match=rf"\(method differ\).* Delete {one}, then run shard 0's command again as rank 1 of 2"):  # fmt: skip
        merge(output)
    one.unlink()
    shard(1)
    merge(output)
    assert output.read_bytes() == alone.read_bytes()

    head, *results = one.read_text(encoding="utf-8").splitlines()
    one.write_text("".join(r + "\n" for r in results), encoding="utf-8")  # a run that did not finish
    with pytest.raises(InputError, match=rf"{one} has no shard header .* run the same command again as rank 1 of 2"):
        merge(output)
    one.write_text("".join(r + "\n" for r in [head, *results[1:]]), encoding="utf-8")  # a result lost
    lost = json.loads(results[0])["index"]
    with pytest.raises(InputError, match=rf"^Line index {lost} has no result in {one}, the shard that explains it"):
        merge(output)
    shard(1)  # resumes: only the lost result is explained again
    merge(output)
    assert output.read_bytes() == alone.read_bytes()


def test_a_shard_that_lost_its_last_results_is_named_and_its_rank_resumes_it(tiny_lm, tokenizer, tmp_path):
    # the merge took 0..n-2 for all there was, and the output lacked the last line's result
    prompts, output = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    alone = tmp_path / "alone.jsonl"
    explain_dataset(tiny_lm, tokenizer, prompts, alone, batch_size=2, progress=False)
    for rank in (0, 1):
        explain_dataset(tiny_lm, tokenizer, prompts, output, batch_size=2, shard=(rank, 2), progress=False)
    last = len(PROMPTS) - 1
    (cut,) = [
        path
        for path in (shard_path(output, rank, 2) for rank in (0, 1))
        if json.loads(path.read_text(encoding="utf-8").splitlines()[-1])["index"] == last
    ]
    rank = int(cut.name.split("-")[-3])
    cut.write_text("".join(t + "\n" for t in cut.read_text(encoding="utf-8").splitlines()[:-1]), encoding="utf-8")
    with pytest.raises(InputError) as error:
        merge(output)
    assert str(error.value) == (
        f"Line index {last} has no result in {cut}, the shard that explains it (its run stopped before it wrote every "
        f"result, or the file was cut short): run the same command again as rank {rank} of 2 (RANK={rank} "
        f"WORLD_SIZE=2 in its environment, or shard=({rank}, 2)); it resumes from the results the file holds."
    )
    assert not output.exists()
    rerun = explain_dataset(tiny_lm, tokenizer, prompts, output, batch_size=2, shard=(rank, 2), progress=False)
    assert rerun.new == 1
    merge(output)
    assert output.read_bytes() == alone.read_bytes()

    # shards of attnlrp 0.2.0, whose headers name neither the input's lines nor their own, still merge
    for rank in (0, 1):
        head, *results = shard_path(output, rank, 2).read_text(encoding="utf-8").splitlines()
        old = json.loads(head)
        del old["attnlrp_shard"]["lines"], old["attnlrp_shard"]["indices"]
        shard_path(output, rank, 2).write_text("".join(t + "\n" for t in [json.dumps(old), *results]), "utf-8")
    output.unlink()
    merge(output)
    assert output.read_bytes() == alone.read_bytes()


def test_shards_on_another_machine_are_kept_and_the_merge_by_hand_is_named(
    tiny_lm, tokenizer, tmp_path, capsys, monkeypatch
):
    # two machines with their own disks: rank 0 saw only its own shard, and the merge at the end failed on it
    import torch.distributed as dist

    prompts, output = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    alone = tmp_path / "alone.jsonl"
    explain_dataset(tiny_lm, tokenizer, prompts, alone, batch_size=2, progress=False)
    (tmp_path / "node1").mkdir()
    elsewhere = tmp_path / "node1" / shard_path(output, 1, 2).name
    explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "node1" / "out.jsonl", batch_size=2, shard=(1, 2),
                    progress=False)  # fmt: skip

    # rank 0 of 2 machines of one process each, in a process group of its own for the barrier
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    try:
        summary = explain_dataset(tiny_lm, tokenizer, prompts, output, batch_size=2, progress=False)
    finally:
        dist.destroy_process_group()
    said = capsys.readouterr().err.splitlines()
    assert summary.merged is None and not output.exists() and shard_path(output, 0, 2).is_file()
    assert said == [
        f"attnlrp: not merged: 1 of the 2 shards of {output} are not on this machine (e.g. out.jsonl.shard-1-of-2, "
        f"written on another one); every shard is kept: copy the out.jsonl.shard-*-of-2 files of the other machines "
        f"into {tmp_path} and run: attnlrp merge {output} --world 2"
    ]
    elsewhere.rename(shard_path(output, 1, 2))
    merge(output, 2)
    assert output.read_bytes() == alone.read_bytes()


def test_each_process_labels_its_progress_bar_with_its_rank(tiny_lm, tokenizer, tmp_path, monkeypatch):
    # the bars of two processes in one terminal were both "explaining", one over the other
    from rich.progress import Progress

    labels = []
    add_task = Progress.add_task
    monkeypatch.setattr(Progress, "add_task", lambda bar, text, **kw: labels.append(text) or add_task(bar, text, **kw))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    for shard in ((0, 1), (1, 2)):
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "out.jsonl", batch_size=2, shard=shard)
    assert labels == ["explaining", "explaining (rank 1/2)"]


@pytest.mark.parametrize("shard", [("0", "2"), (0.5, 2), 2, (1, 2, 3), (True, 2)])
def test_a_shard_of_the_wrong_kind_is_one_line(shard, tiny_lm, tokenizer, tmp_path):
    # TypeErrors, or a float rank that passed the range check and failed deep in the batch plan
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"a b"\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"is not a \(rank, world\) pair of whole numbers"):
        explain_dataset(tiny_lm, tokenizer, prompts, tmp_path / "out.jsonl", shard=shard, progress=False)


@pytest.mark.parametrize(
    ("rank", "world", "says"),
    [
        ("0", "x", "WORLD_SIZE='x' in the environment is not the number of processes, 1 or more"),
        ("0", "0", "WORLD_SIZE='0' in the environment is not the number of processes, 1 or more"),
        ("2", "2", "RANK='2' in the environment is not this process's number, 0 to WORLD_SIZE - 1 = 1"),
        ("-1", "2", "RANK='-1' in the environment is not this process's number"),
        ("one", "2", "RANK='one' in the environment is not this process's number"),
    ],
)
def test_a_launcher_variable_out_of_place_is_one_line_naming_it(rank, world, says, monkeypatch):
    # a ValueError of int() naming neither variable, or "shard=(2, 2) is not a (rank, world) pair" for RANK=2
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(InputError) as error:
        current_shard()
    assert str(error.value).startswith(says) and "\n" not in str(error.value)
    assert str(error.value).endswith("unset RANK and WORLD_SIZE to run one process.")


@pytest.mark.parametrize(
    ("env", "cuda", "device", "want"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True, "cuda", "cuda:1"),  # its own GPU, not cuda:0
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, True, "cuda", "cuda:1"),  # 2 machines of 2 GPUs
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True, "cuda:0", "cuda:0"),  # a GPU named is kept
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True, None, None),  # the default, cpu
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True, "auto", "auto"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, False, "cuda", "cuda"),  # no CUDA: load_model says so
        ({"RANK": "1", "WORLD_SIZE": "2"}, True, "cuda", "cuda"),  # no LOCAL_RANK: set by hand
        ({}, True, "cuda", "cuda"),  # one process
    ],
)
def test_each_process_of_a_launcher_loads_on_its_own_gpu(env, cuda, device, want, monkeypatch):
    # every process of torchrun --nproc-per-node 2 ... --device cuda loaded its model on cuda:0
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    assert process_device(device) == want
    assert local_gpu() == (int(env["LOCAL_RANK"]) if cuda and env.get("LOCAL_RANK") else None)


def test_the_command_line_loads_each_process_on_its_gpu(monkeypatch):
    import argparse

    import attnlrp
    from attnlrp import cli

    loaded = {}
    monkeypatch.setattr(attnlrp, "load_model", lambda *args, **options: loaded.update(options) or (None, None))
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cli._load(argparse.Namespace(model="m", gguf_file=None, dtype=None, device="cuda", quiet=False))
    assert loaded["device_map"] == "cuda:1"


def test_a_local_rank_beyond_the_gpus_is_one_line(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match=r"^LOCAL_RANK='2' in the environment is not this process's GPU, 0 to 1: "
                       r"this machine has 2 GPU\(s\): start at most 2 processes on it \(torchrun --nproc-per-node 2\)\.$"):  # fmt: skip
        process_device("cuda")


def test_batches_are_balanced_by_padded_tokens():
    lengths = [10, 10, 40, 40, 5, 5, 5, 5]
    batches = [[0, 1], [2, 3], [4, 5], [6, 7]]
    shares = assign(batches, lengths, 2)
    work = [sum(len(batches[b]) * max(lengths[i] for i in batches[b]) for b in share) for share in shares]
    assert shares == [[1], [0, 2, 3]] and work == [80, 40]
    assert sorted(b for share in assign(batches, lengths, 3) for b in share) == [0, 1, 2, 3]


def test_latent_collect_under_torchrun_merges_its_shards(folder, tmp_path):
    from test_latent import _same_atlas

    from attnlrp.latent import FeatureAtlas

    corpus = tmp_path / "corpus.jsonl"
    texts = [f"{p} {word}" for word in ("again", "today", "now") for p in PROMPTS]  # shared prefixes: near-ties
    corpus.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    common = (
        "latent",
        "collect",
        "--model",
        str(folder),
        "--corpus",
        str(corpus),
        "--sites",
        "model.layers.*.mlp.down_proj",
        "--top-k",
        "3",
        "--batch-size",
        "4",
        "--method",
        "cp-lrp",
        "--quiet",
    )
    single = _attnlrp(*common, "--output", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    multi = _attnlrp(*common, "--output", str(tmp_path / "two"), launcher=_torchrun())
    assert multi.returncode == 0, multi.stderr
    assert "merged 2 shards" in multi.stdout and (tmp_path / "two.shard-1-of-2").is_dir()
    _same_atlas(FeatureAtlas.load(tmp_path / "two"), FeatureAtlas.load(tmp_path / "one"))


def test_a_line_added_before_a_rerun_moves_results_between_shards_without_calling_them_deleted(
    tiny_lm, tokenizer, tmp_path
):
    prompts, output = tmp_path / "p.jsonl", tmp_path / "out.jsonl"

    def run_shards(lines: list[str]) -> list[str]:
        prompts.write_text("".join(json.dumps(p) + "\n" for p in lines), encoding="utf-8")
        texts = [
            str(explain_dataset(tiny_lm, tokenizer, prompts, output, batch_size=2, shard=(rank, 2), progress=False))
            for rank in (0, 1)
        ]
        merge(output)
        return texts

    run_shards(PROMPTS)
    texts = run_shards(["A new first line, longer than the others by far", *PROMPTS])
    assert not any("deleted" in t or "edited" in t for t in texts), texts
    assert any("now in another shard's batches" in t for t in texts), texts
    assert all(
        t.startswith(f"shard {r} of 2: ") and f" of {len(PROMPTS) + 1} lines in " in t for r, t in enumerate(texts)
    )
    alone = tmp_path / "alone.jsonl"
    explain_dataset(tiny_lm, tokenizer, prompts, alone, batch_size=2, progress=False)
    assert output.read_bytes() == alone.read_bytes()


@pytest.mark.real
def test_evaluate_under_torchrun_splits_the_items_and_rank_0_summarises(tmp_path):
    # attnlrp evaluate under a launcher was refused; the bundled model gets facts right, as a suite needs
    common = ("evaluate", "--suite", "facts", "--limit", "20", "--methods", "random,gradient", "--quiet")
    single = _attnlrp(*common, "--output", str(tmp_path / "one" / "e.json"))
    assert single.returncode == 0, single.stderr
    multi = _attnlrp(*common, "--output", str(tmp_path / "e.json"), launcher=_torchrun())
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout.count("facts: 20 items kept") == 1, "rank 0 alone prints the table"
    assert (tmp_path / "e.html").is_file() and (tmp_path / "e.json").is_file()
    shards = [(tmp_path / f"e.jsonl.shard-{rank}-of-2").read_text().splitlines()[1:] for rank in range(2)]
    assert shards[0] and shards[1] and len(shards[0]) + len(shards[1]) == 2 * 20, "each took a share, none twice"

    def metrics(path):
        results = json.loads(path.read_text())
        return {name: {k: v for k, v in m.items() if k != "seconds"} for name, m in results["metrics"].items()}

    assert metrics(tmp_path / "e.json") == metrics(tmp_path / "one" / "e.json")
