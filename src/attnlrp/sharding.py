"""Data-parallel dataset runs: which process takes which batches, where each writes, and the merge.

Processes come from an existing launcher: ``torchrun`` and ``accelerate launch`` set ``RANK`` and
``WORLD_SIZE``, and ``torch.distributed`` (gloo, or nccl on GPUs) gives the barrier before the automatic
merge. Every process plans the same batches as a single process would (so each result is computed in the same
batch, with the same numbers) and takes whole batches of that plan, balanced by their padded token count.
Each writes its own shard file, headed by its rank, the world size and the run's settings; ``merge`` needs
no process group, so shards written on different machines can be merged later.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from .errors import InputError

HEADER = "attnlrp_shard"
#: What to do about a launcher's variable that is wrong
_LAUNCHER = "a launcher (torchrun, accelerate launch) sets it; unset RANK and WORLD_SIZE to run one process"


def current_shard() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun, accelerate launch), else (0, 1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    world = _from_environment("WORLD_SIZE", "the number of processes, 1 or more", 1)
    rank = _from_environment("RANK", f"this process's number, 0 to WORLD_SIZE - 1 = {world - 1}", 0, world)
    return rank, world


def local_gpu() -> int | None:
    """The GPU of this process in a launcher's multi-process run on a machine with CUDA: ``LOCAL_RANK`` (its
    number on this machine, set by torchrun and accelerate launch), so that the processes of one machine don't
    share a GPU; None in a single process, without CUDA or without ``LOCAL_RANK``."""
    import torch

    if current_shard()[1] == 1 or "LOCAL_RANK" not in os.environ or not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    fix = f"this machine has {count} GPU(s): start at most {count} processes on it (torchrun --nproc-per-node {count})"
    return _from_environment("LOCAL_RANK", f"this process's GPU, 0 to {count - 1}", 0, count, fix)


def process_device(device: str | None) -> str | None:
    """Where this process loads the model asked for on ``device`` (``--device``): plain ``cuda`` is its own GPU
    (``cuda:LOCAL_RANK``) in a launcher's multi-process run, not the first GPU for every process; anything else
    as given."""
    gpu = local_gpu() if device == "cuda" else None
    return device if gpu is None else f"cuda:{gpu}"


def _from_environment(name: str, meaning: str, low: int, high: int | None = None, fix: str = _LAUNCHER) -> int:
    """The whole number in environment variable ``name``, from ``low`` up to (not including) ``high``, or an
    InputError naming the variable, its value, what it should be and ``fix``."""
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number >= high):
        raise InputError(f"{name}={value!r} in the environment is not {meaning}: {fix}.")
    return number


def progress_label(text: str, shard: tuple[int, int]) -> str:
    """``text`` for a progress bar, with this process's rank (``"explaining (rank 1/2)"``) where several share the
    terminal."""
    rank, world = shard
    return text if world == 1 else f"{text} (rank {rank}/{world})"


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as (rank, world), or an InputError saying what is wrong with it."""
    pair = tuple(shard) if isinstance(shard, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair):
        raise InputError(f"shard={shard!r} is not a (rank, world) pair of whole numbers, e.g. (0, 2).")
    rank, world = pair
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"shard={shard} is not a (rank, world) pair with 0 <= rank < world.")
    return rank, world


def assign(batches: Sequence[Sequence[int]], lengths: Sequence[int], world: int) -> list[list[int]]:
    """Batch indices per rank: whole batches, the costliest first, each to the rank with the least work so far
    (work: padded tokens, rows x the longest row); ties go to the lower rank, so every process agrees."""
    cost = [len(b) * max(lengths[i] for i in b) for b in batches]
    load, out = [0] * world, [[] for _ in range(world)]
    for index in sorted(range(len(batches)), key=lambda i: (-cost[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        out[rank].append(index)
        load[rank] += cost[index]
    return [sorted(b) for b in out]


def shard_path(output: str | Path, rank: int, world: int) -> Path:
    """The file rank ``rank`` of ``world`` writes for ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.shard-{rank}-of-{world}")


def _without_path(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings to compare across shards: where the weights' digest tells the model, not the path it was loaded
    from (shards written on machines that mount it elsewhere)."""
    return {k: v for k, v in settings.items() if k != "model" or "weights" not in settings}


def header(rank: int, world: int, settings: dict[str, Any], lines: int, indices: Sequence[int]) -> str:
    """The first line of a shard file: its rank, the world size, the run's settings, the number of lines of the
    whole input and the line indices this shard explains (so that a merge misses no result)."""
    head = {"rank": rank, "world": world, "settings": settings, "lines": lines, "indices": list(indices)}
    return json.dumps({HEADER: head}, sort_keys=True)


def read_header(text: str) -> dict | None:
    """A shard file's header from its first line, or None where the line is a result."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value.get(HEADER) if isinstance(value, dict) else None


def shards_of(output: str | Path) -> dict[int, list[Path]]:
    """The shard files of ``output`` on disk, by the world size they were written for."""
    output = Path(output)
    pattern = re.compile(re.escape(output.name) + r"\.shard-(\d+)-of-(\d+)$")
    found: dict[int, list[Path]] = {}
    for path in sorted(output.parent.glob(output.name + ".shard-*")):
        match = pattern.match(path.name)
        if match:
            found.setdefault(int(match.group(2)), []).append(path)
    return found


def merge(output: str | Path, world: int | None = None) -> Path:
    """Merge the shard files of ``output`` into ``output``: every result once, in input order, byte for byte as
    a single process with the shards' number of CPU threads writes them (the thread count changes the last digits
    of CPU float sums). ``world``: the number of shards expected (default: the only size found).
    Shards that are folders are the atlases of a ``collect`` (``attnlrp latent collect --shard``): they merge
    into one atlas folder."""
    output = Path(output)
    if world is not None and world < 1:
        raise InputError(f"The world size is the number of processes of the run: 1 or more, not {world}.")
    found = shards_of(output)
    if not found:
        raise InputError(f"No shard files of {output} (like {shard_path(output, 0, 2).name}) were found.")
    if world is None:
        if len(found) > 1:
            raise InputError(
                f"Shards of {output} for several world sizes are there ({sorted(found)}): say which (world=, or --world on the command line)."
            )
        (world,) = found
    paths = found.get(world, [])
    ranks = sorted(map(_rank_of, paths))
    if ranks != list(range(world)):
        seen = {w: sorted(map(_rank_of, ps)) for w, ps in found.items()}
        missing = [r for r in range(world) if r not in ranks]
        raise InputError(
            f"Merging {output} needs the {world} shards 0..{world - 1} of a {world}-process run, but found "
            f"{', '.join(f'ranks {r} of {w}' for w, r in seen.items())}: give the world size the run used (world=, "
            f"or --world), or run the same command as rank {', '.join(map(str, missing))} of {world} (e.g. "
            f"{_as_shard(missing[0], world)}, which writes {shard_path(output, missing[0], world).name})."
        )
    if all(path.is_dir() for path in paths):
        from .latent.atlas import merge_folders

        return merge_folders(paths, output)
    records: list[tuple[int, str]] = []
    settings, owners, count = None, {}, None
    for path in paths:
        rank = _rank_of(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        head = read_header(lines[0]) if lines else None
        if head is None or head.get("world") != world:
            raise InputError(
                f"{path} has no shard header of a {world}-process run, so its run did not finish: run the same "
                f"command again as rank {rank} of {world} ({_as_shard(rank, world)}) and it resumes from the results "
                "the file holds (delete the file first if attnlrp did not write it)."
            )
        if settings is not None and _without_path(head["settings"]) != _without_path(settings):
            different = sorted(
                k for k in set(settings) | set(head["settings"]) if settings.get(k) != head["settings"].get(k)
            )
            raise InputError(
                f"{path} was written with other settings than shard 0 ({', '.join(different)} differ): shards of "
                f"different runs can't be mixed in one output. Delete {path}, then run shard 0's command again as "
                f"rank {rank} of {world} ({_as_shard(rank, world)}): that shard is explained afresh, and the other "
                "shards' results are kept."
            )
        settings, count = head["settings"], head.get("lines")  # the same in every shard (settings: the input's digest)
        owners.update(dict.fromkeys(head.get("indices", ()), path))
        records += [(json.loads(text)["index"], text) for text in lines[1:] if text.strip()]
    records.sort()
    indices = [index for index, _ in records]
    count = len(records) if count is None else count  # the headers of attnlrp 0.2.0 don't say
    if indices != list(range(count)):
        lost = _lost(indices, count)
        if lost in owners:
            path, rank = owners[lost], _rank_of(owners[lost])
            raise InputError(
                f"Line index {lost} has no result in {path}, the shard that explains it (its run stopped before it "
                f"wrote every result, or the file was cut short): run the same command again as rank {rank} of "
                f"{world} ({_as_shard(rank, world)}); it resumes from the results the file holds."
            )
        raise InputError(
            f"The shards of {output} don't hold one result per input line ({_gap(indices, count)}): run the same "
            f"command again for each rank of {world}; each resumes from the results its shard holds and rewrites "
            "it with one result per line of its share."
        )
    staging = output.with_name(output.name + ".tmp")
    staging.write_text("".join(text + "\n" for _, text in records), encoding="utf-8")
    os.replace(staging, output)
    return output


def _rank_of(path: Path) -> int:
    """The rank in a shard file's name (``out.jsonl.shard-<rank>-of-<world>``)."""
    return int(path.name.rsplit("-", 3)[-3])


def _as_shard(rank: int | str, world: int) -> str:
    """How to run a command as rank ``rank`` of ``world``: the launcher's environment, or the Python API's."""
    return f"RANK={rank} WORLD_SIZE={world} in its environment, or shard=({rank}, {world})"


def _lost(indices: list[int], lines: int) -> int | None:
    """The first line index of 0..lines - 1 that ``indices`` lack, or None where none is lacking."""
    held = set(indices)
    return next((i for i in range(lines) if i not in held), None)


def _gap(indices: list[int], lines: int) -> str:
    """The first fault of sorted ``indices`` (not 0, 1, ..., lines - 1): a result missing, twice, or beyond."""
    lost = _lost(indices, lines)
    if lost is not None:
        return f"no result of line index {lost}"
    twice = next((a for a, b in pairwise(indices) if a == b), None)
    return f"line index {twice} twice" if twice is not None else f"line index {indices[-1]} of {lines} lines"


@contextmanager
def process_group():
    """A torch.distributed process group for the duration, where a launcher started several processes and none
    exists yet (gloo on CPUs; nccl on GPUs, each process on its own: ``local_gpu``); nothing otherwise."""
    import torch
    import torch.distributed as dist

    _, world = current_shard()
    if world == 1 or not dist.is_available() or dist.is_initialized() or "MASTER_ADDR" not in os.environ:
        yield
        return
    gpu = local_gpu()
    if gpu is not None:
        torch.cuda.set_device(gpu)  # nccl's barrier runs on the current GPU: each process's own
    dist.init_process_group("nccl" if gpu is not None else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def wait_for_all(then: Callable[[], bool]) -> bool:
    """Wait for every process of the group, run ``then`` on rank 0, and tell every process what it returned (the
    broadcast waits for it). False where there is no process group to wait for (shards are then merged by hand)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    _together(dist.barrier)
    answer = [then() if dist.get_rank() == 0 else None]
    _together(lambda: dist.broadcast_object_list(answer, src=0))
    return bool(answer[0])


def _together(collective: Callable[[], Any]) -> None:
    """Run ``collective`` (a barrier, a broadcast), or one line where another process left the group."""
    try:
        collective()
    except RuntimeError as error:  # a process that failed left the group (gloo: "Connection closed by peer")
        raise InputError(
            "Another process of this run stopped (its error is above): this one's results are kept; fix that and run "
            "the same command again to resume."
        ) from error


def finish(output: str | Path, world: int) -> bool:
    """Wait for every process of the group, then merge on rank 0 where it sees every shard file; True where the
    shards were merged. Where some shards are not on rank 0's machine (several machines, no shared folder), every
    shard is kept and one line says how to merge them by hand; False too where there is no process group to wait
    for (the shards are then merged by hand: ``attnlrp merge``)."""
    return world == 1 or wait_for_all(lambda: _merge_here(Path(output), world))


def _merge_here(output: Path, world: int) -> bool:
    """Merge the shards of ``output`` where this machine sees all ``world`` of them; else print how to merge them
    once gathered, and keep them."""
    missing = [rank for rank in range(world) if not shard_path(output, rank, world).exists()]
    if missing:
        print(
            f"attnlrp: not merged: {len(missing)} of the {world} shards of {output} are not on this machine (e.g. "
            f"{shard_path(output, missing[0], world).name}, written on another one); every shard is kept: copy the "
            f"{output.name}.shard-*-of-{world} files of the other machines into {output.parent} and run: attnlrp "
            f"merge {output} --world {world}",
            file=sys.stderr,
        )
        return False
    merge(output, world)
    return True
