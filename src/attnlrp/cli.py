"""The ``attnlrp`` command: explain, generate, audit and evaluate, mirroring the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  attnlrp explain "The Eiffel Tower is located in the city of"
  attnlrp explain "The capital of France is" --target " Paris" --contrast " Rome" --html out.html
  attnlrp explain --input prompts.jsonl --output results.jsonl     (resumes if interrupted)
  attnlrp generate "Write a haiku about the sea." --max-new-tokens 24 --html gen.html
  attnlrp audit --model path/to/model
  attnlrp evaluate --suite facts --methods attnlrp,input_x_gradient,random --limit 50 --output facts.json
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlrp",
        description="Explain what a transformer's prediction rests on, with AttnLRP "
        "(one forward and one backward pass). Without --model, the bundled SmolLM2-135M-Instruct is used.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .engine import RULE_SETS
    from .methods import available_methods

    methods = available_methods()

    def common(p: argparse.ArgumentParser, choices=tuple(methods)) -> None:
        p.add_argument("--model", help="a model folder or hub id (default: the bundled SmolLM2-135M-Instruct)")
        p.add_argument("--gguf-file", help="a GGUF file inside --model (converted once, then cached)")
        p.add_argument(
            "--method",
            default="attnlrp",
            choices=choices,
            metavar="METHOD",
            help="the attribution method (default: attnlrp); one of: "
            + "; ".join(f"{name}: {methods[name]}" for name in choices),
        )
        p.add_argument("--no-color", action="store_true", help="plain text output, no colours")

    ex = commands.add_parser(
        "explain",
        help="explain the next token (or an answer) for a prompt",
        description="Explain which prompt tokens the model's next-token prediction rests on.",
    )
    ex.add_argument("prompt", nargs="?", help="the text to explain (or use --input for many prompts)")
    common(ex)
    ex.add_argument("--target", help="the next token to explain (default: the model's top prediction)")
    what = ex.add_mutually_exclusive_group()
    what.add_argument("--contrast", help="explain target minus this token's logit; 'mean' for minus the mean logit")
    what.add_argument("--answer", help="explain this whole answer, teacher-forced after the prompt (not with --target)")
    ex.add_argument("--words", action="store_true", help="merge sub-word tokens into words")
    ex.add_argument("--json", metavar="PATH", help="save the explanation as JSON")
    ex.add_argument("--html", metavar="PATH", help="save a self-contained HTML heatmap")
    ex.add_argument(
        "--input",
        metavar="JSONL",
        help='many prompts: one per line, a string or {"prompt": ..., "target": ..., "contrast": ..., "answer": ...}',
    )
    ex.add_argument("--output", metavar="JSONL", help="results for --input, one line each; rerunning resumes")
    ex.add_argument("--batch-size", type=int, default=8, help="prompts per forward/backward pass (default: 8)")

    gen = commands.add_parser(
        "generate",
        help="generate, then explain every generated token",
        description="Generate greedily, then explain each generated token against all before it.",
    )
    gen.add_argument("prompt", help="the prompt to continue")
    common(gen)
    gen.add_argument("--max-new-tokens", type=int, default=32, help="how many tokens to generate (default: 32)")
    gen.add_argument("--json", metavar="PATH", help="save the result as JSON")
    gen.add_argument("--html", metavar="PATH", help="save a self-contained interactive HTML page")

    au = commands.add_parser(
        "audit",
        help="list the ops of a model that have no LRP rule",
        description="Run the model once under the LRP rules and report ops without a rule.",
    )
    common(au, RULE_SETS)

    from .evaluate.command import add_arguments

    add_arguments(
        commands.add_parser(
            "evaluate",
            help="measure faithfulness: ground-truth suites and perturbation",
            description="Compare attribution methods on generated suites the model gets right.",
        )
    )
    return parser


def _load(args):
    import attnlrp

    return attnlrp.load_model(args.model, gguf_file=args.gguf_file)


def _target(spec: dict):
    import attnlrp

    if spec.get("answer"):
        return attnlrp.Answer(spec["answer"])
    if spec.get("contrast"):
        return attnlrp.Contrast(spec.get("target"), spec["contrast"])
    return spec.get("target")


def _explain_one(args, model, tokenizer) -> None:
    import attnlrp

    exp = attnlrp.explain(model, tokenizer, args.prompt, target=_target(vars(args)), method=args.method)
    shown = exp.words() if args.words else exp
    shown.show(color=False if args.no_color else None)
    if args.json:
        print(f"saved {exp.save(args.json)}")
    if args.html:
        print(f"saved {shown.save_html(args.html)}")


def _read_jsonl(path: Path) -> list[dict]:
    from .errors import InputError

    specs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{n}: not valid JSON ({error}).") from error
        spec = {"prompt": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or "prompt" not in spec:
            raise InputError(f'{path}:{n}: each line must be a string or an object with a "prompt" key.')
        specs.append(spec)
    return specs


def _finished(path: Path) -> set[int]:
    """Indices already in the output; a torn last line (from an interruption) is dropped."""
    from .errors import InputError

    if not path.exists():
        return set()
    done, keep = set(), []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            raise InputError(
                f"{path}:{n} is not an attnlrp result line; give --output a new file name "
                "(or the file a previous run wrote, to resume it)."
            )
        done.add(record["index"])
        keep.append(line)
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    return done


def _explain_many(args, model, tokenizer) -> None:
    from rich.progress import Progress

    import attnlrp

    from .errors import InputError

    if not args.output:
        raise InputError("--input needs --output: the file the results are written to (one JSON line each).")
    specs = _read_jsonl(Path(args.input))
    output = Path(args.output)
    done = _finished(output)
    todo = [i for i in range(len(specs)) if i not in done]
    with output.open("a", encoding="utf-8") as out, Progress(disable=args.no_color and not sys.stderr.isatty()) as bar:
        task = bar.add_task("explaining", total=len(specs), completed=len(done))
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            results = attnlrp.explain(
                model,
                tokenizer,
                [specs[i]["prompt"] for i in chunk],
                target=[_target(specs[i]) for i in chunk],
                method=args.method,
            )
            for i, exp in zip(chunk, results):
                out.write(json.dumps({"index": i, **exp.to_dict()}, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.advance(task, len(chunk))
    print(f"{len(specs)} results in {output} ({len(todo)} new, {len(done)} already there)")


def _generate(args, model, tokenizer) -> None:
    import attnlrp

    gen = attnlrp.explain_generation(
        model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, method=args.method
    )
    print(repr(gen))
    gen.show(color=False if args.no_color else None)
    if args.json:
        print(f"saved {gen.save(args.json)}")
    if args.html:
        print(f"saved {gen.save_html(args.html)}")


def _audit(args, model, tokenizer) -> None:
    import attnlrp

    print(
        attnlrp.audit(
            model, tokenizer("The Eiffel Tower is located in", return_tensors="pt").input_ids, method=args.method
        )
    )


def _evaluate(args, model, tokenizer) -> None:
    from .evaluate.command import run

    run(args, model, tokenizer)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "explain" and not (args.prompt or args.input):
        parser.error("explain needs a prompt, or --input prompts.jsonl --output results.jsonl")
    from .errors import AttnLRPError

    try:
        model, tokenizer = _load(args)
        run = {"generate": _generate, "audit": _audit, "evaluate": _evaluate}.get(
            args.command, _explain_many if getattr(args, "input", None) else _explain_one
        )
        run(args, model, tokenizer)
    except (AttnLRPError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"attnlrp: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
