"""The ``attnlrp`` command: explain, generate, audit and evaluate, mirroring the Python API.

Errors print one line (``attnlrp: error: ...``, exit 2); Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

EXAMPLES = """examples:
  attnlrp explain "The Eiffel Tower is located in the city of"
  attnlrp explain "The capital of France is" --target " Paris" --contrast " Rome" --html out.html
  attnlrp explain --input prompts.jsonl --output results.jsonl     (resumes if interrupted)
  attnlrp generate "Write a haiku about the sea." --max-new-tokens 24 --html gen.html
  attnlrp audit --model path/to/model
  attnlrp evaluate --suite facts --methods attnlrp,input_x_gradient,random --limit 50 --output facts.json
  attnlrp latent collect --corpus labelled --sites "model.layers.*.mlp.down_proj" --output atlas
"""

EXPLAIN_EXAMPLES = """examples:
  attnlrp explain "The Eiffel Tower is located in the city of" --top 5
  attnlrp explain "The capital of France is" --target " Paris" --contrast " Rome" --words --html out.html
  attnlrp explain "Where is the Eiffel Tower?" --chat --system "Answer briefly." --answer "In Paris."
  attnlrp explain "The capital of France is" --method input_x_gradient --dtype bfloat16
  attnlrp explain "The capital of France is" --method "integrated_gradients(steps=64)"
  attnlrp explain "The capital of France is" --target " Paris" --log-prob
  attnlrp explain "I loved this film" --model path/to/classifier --label positive
  attnlrp explain "A man plays guitar." --model path/to/nli-model --pair "Someone makes music."
  attnlrp explain "Ada Lovelace lived in London" --model path/to/ner-model --at London
  attnlrp explain --model path/to/vit --image cat.png --html cat.html
  attnlrp explain --input prompts.jsonl --output results.jsonl     (resumes if interrupted)

Each line of --input is a prompt string or an object with "prompt" and any of "target", "target_id" (a
token or label id), "contrast", "answer", "log_prob" (true: as --log-prob), "label", "pair", "at" (a word
as a string, "1990" too; a token position as a number), "image" (a path), "system", "chat" (true: the
prompt as a user message) and "id"; other fields are copied to the output line (one that looks like a
misspelt field, "traget", is refused).
Results are matched to input lines by content and id, so a rerun after editing, deleting or reordering lines
recomputes only what changed and writes the input's order.
"""

GENERATE_EXAMPLES = """examples:
  attnlrp generate "Write a haiku about the sea." --max-new-tokens 24 --html haiku.html
  attnlrp generate "Name three rivers." --chat --system "Be brief." --json rivers.json
  attnlrp generate "The capital of France is" --method cp-lrp --max-new-tokens 4 --no-color
"""

MERGE_EXAMPLES = """examples:
  torchrun --nproc-per-node 2 -m attnlrp explain --input prompts.jsonl --output out.jsonl   (merges at the end)
  attnlrp merge out.jsonl                       (shards written on several machines, merged later)
  attnlrp merge out.jsonl --world 4
"""

AUDIT_EXAMPLES = """examples:
  attnlrp audit                                 (the bundled model)
  attnlrp audit --model path/to/model --method cp-lrp
  attnlrp audit --check --model path/to/model   (conservation module by module; exit code 1 if a module leaks)
"""


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a number of tokens, 0 or more, not {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlrp",
        description="Explain what a transformer's prediction rests on, with AttnLRP "
        "(one forward and one backward pass). Without --model, the bundled SmolLM2-135M-Instruct is used.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"attnlrp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .cli_options import add_model_arguments, html_path, method_option
    from .engine import RULE_SETS
    from .methods import available_methods

    methods = available_methods()

    def command(name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=description,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def common(
        p: argparse.ArgumentParser,
        choices: Sequence[str] | None = None,
        default="attnlrp; cp-lrp for image classifiers, as in explain_image",
    ) -> None:
        """The model's options, --method (any method with its options, or one of ``choices``) and --no-color."""
        add_model_arguments(p)
        p.add_argument(
            "--method",
            choices=choices,
            type=None if choices else method_option,
            metavar="METHOD",
            help=f"the attribution method (default: {default}); one of: "
            + "; ".join(f"{name}: {methods[name]}" for name in choices or methods)
            + ("" if choices else '; options in parentheses, as in Python: "integrated_gradients(steps=64)"'),
        )
        p.add_argument("--no-color", action="store_true", help="plain text output, no colours")

    def conversation(p: argparse.ArgumentParser) -> None:
        p.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
        p.add_argument("--system", help="a system message before the prompt (implies --chat)")

    ex = command(
        "explain",
        "explain a prediction: the next token, an answer, a label, a similarity, an image class",
        "Explain which inputs a model's prediction rests on. The task comes from the model: a causal LM's next "
        "token or answer, a classifier's label, a token's label, the similarity of two texts, an image's class.",
        EXPLAIN_EXAMPLES,
    )
    ex.add_argument("prompt", nargs="?", help="the text to explain (or use --input for many prompts)")
    common(ex)
    conversation(ex)
    token = ex.add_mutually_exclusive_group()
    token.add_argument("--target", help="the next token to explain (default: the model's top prediction)")
    token.add_argument("--target-id", type=int, metavar="ID", help="the next token to explain, by its id")
    what = ex.add_mutually_exclusive_group()
    what.add_argument("--contrast", help="explain target minus this token's (or label's) logit; 'mean' for the mean")
    what.add_argument("--answer", help="explain this whole answer, teacher-forced after the prompt (not with --target)")
    what.add_argument(
        "--log-prob",
        action="store_true",
        help="explain the log-probability of --target, --target-id or --label (default: the top one), not its logit",
    )
    ex.add_argument("--label", help="classifiers: the label to explain (default: the predicted one)")
    ex.add_argument("--pair", help="classifiers and sentence similarity: the second text (NLI hypothesis, ...)")
    ex.add_argument(
        "--pooling", choices=("mean", "cls", "last"), help="sentence similarity: the pooling (default: the model's)"
    )
    ex.add_argument(
        "--similarity",
        choices=("cosine", "dot", "logit"),
        help="sentence similarity: cosine (default) or dot; CLIP: cosine (default) or logit (cosine x logit scale)",
    )
    where = ex.add_mutually_exclusive_group()
    where.add_argument(
        "--at",
        metavar="WORD",
        help="token classifiers: the word whose label is explained (its first token; digits are a word too: --at 1990)",
    )
    where.add_argument(
        "--at-position",
        type=int,
        metavar="N",
        help="token classifiers: the token position whose label is explained (special tokens count)",
    )
    ex.add_argument("--image", metavar="PATH", help="image models, vision-language models and CLIP: the image")
    ex.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="LRP methods: recompute each layer in the backward pass (the same relevance, less memory: long prompts)",
    )
    ex.add_argument(
        "--top",
        type=_count,
        metavar="K",
        help="also print the K most relevant tokens (words with --words; of the prompt, with --answer)",
    )
    ex.add_argument(
        "--words", action="store_true", help="merge sub-word tokens into words in what is shown (--top, --html)"
    )
    ex.add_argument(
        "--json",
        metavar="PATH",
        help="save the explanation as JSON, token by token (with --words too: .words() of the loaded file is "
        "the word view, with the positions --top prints)",
    )
    ex.add_argument("--html", type=html_path, metavar="PATH", help="save a self-contained HTML heatmap (.html)")
    ex.add_argument("--input", metavar="JSONL", help="many prompts, one per line (see below)")
    ex.add_argument("--output", metavar="JSONL", help="results for --input, one line each; rerunning resumes")
    ex.add_argument("--batch-size", type=int, default=8, help="prompts per forward/backward pass (default: 8)")

    gen = command(
        "generate",
        "generate, then explain every generated token",
        "Generate greedily, then explain each generated token against all before it.",
        GENERATE_EXAMPLES,
    )
    gen.add_argument("prompt", help="the prompt to continue")
    common(gen)
    conversation(gen)
    gen.add_argument("--image", metavar="PATH", help="vision-language models: the image the prompt is about")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="how many tokens to generate (default: 32)")
    gen.add_argument("--json", metavar="PATH", help="save the result as JSON")
    gen.add_argument(
        "--html", type=html_path, metavar="PATH", help="save a self-contained interactive HTML page (.html)"
    )

    au = command(
        "audit",
        "list the ops of a model that have no LRP rule",
        "Run the model once under the LRP rules and report ops without a rule.",
        AUDIT_EXAMPLES,
    )
    common(au, RULE_SETS, "attnlrp, image classifiers too; --check measures cp-lrp")
    au.add_argument(
        "--check",
        action="store_true",
        help="also measure conservation module by module (CP-LRP on a float64 copy; see docs/check.md)",
    )

    merge = command(
        "merge",
        "merge the shard files of a multi-process run into one output",
        "Merge <output>.shard-<rank>-of-<world> files into <output>, in input order, as one process writes it "
        "(runs under torchrun or accelerate launch merge on their own at the end).",
        MERGE_EXAMPLES,
    )
    merge.add_argument("output", help="the --output of the run")
    merge.add_argument("--world", type=int, help="how many processes the run had (default: the shards found)")

    from .evaluate.command import EXAMPLES as EVALUATE_EXAMPLES
    from .evaluate.command import add_arguments

    add_arguments(
        command(
            "evaluate",
            "measure faithfulness: ground-truth suites and perturbation",
            "Compare attribution methods on generated suites the model gets right.",
            EVALUATE_EXAMPLES,
        )
    )

    from .latent.command import EXAMPLES as LATENT_EXAMPLES
    from .latent.command import add_arguments as add_latent_arguments

    add_latent_arguments(
        command(
            "latent",
            "latent features: collect an atlas over a corpus, unit cards, browse, steer",
            "Which neurons, heads and SAE latents predictions rest on, what they mean, and steering with them.",
            LATENT_EXAMPLES,
        )
    )
    return parser


def _load(args):
    import attnlrp
    from attnlrp.sharding import process_device

    device = process_device(args.device)  # under torchrun, cuda is each process's own GPU
    with _quiet(args.quiet):
        return attnlrp.load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device_map=device)


@contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Without the progress bars of transformers (loading, converting a GGUF file) where --quiet asks for it."""
    if not quiet:
        yield
        return
    from transformers.utils import logging

    shown, disabled = logging.is_progress_bar_enabled(), os.environ.get("TQDM_DISABLE")
    logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF conversion's bar is a plain tqdm
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()
        if disabled is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = disabled


def _method(args) -> dict:
    """--method where given; else each function's own default (AttnLRP; CP-LRP for image classifiers)."""
    return {"method": args.method} if args.method else {}


def _print_top(exp, k: int) -> None:
    print(f"top {k} by |relevance|" + (" in the context before the answer:" if exp.context is not None else ":"))
    for display, score, i in exp.top(k):
        print(f"  {i:>5}  {display!r:<24} {score:+.4g}")


#: What a task can't do without, on the command line: (the option's attribute, what to give)
_NEEDS = {
    "token-classification": ("at", "--at WORD or --at-position N, the token whose label is explained"),
    "sentence-similarity": ("pair", "--pair TEXT, the text to compare with"),
    "clip": ("image", "--image PATH, the image the text is compared with"),
    "vision-language": ("image", "--image PATH, the image the prompt is about"),
}


def _explain_one(args, model, tokenizer) -> None:
    import attnlrp

    from .dataset import spec_job
    from .errors import InputError
    from .tasks import TASKS, task_for

    task = task_for(model)
    if task.name == "image":
        return _explain_image(args, model, tokenizer)
    _refuse_audio(model)
    if args.prompt is None:
        raise InputError(f"{type(model).__name__} is a {task.name} model: explain needs a prompt (the text).")
    spec = vars(args)
    if args.at_position is not None:  # --at is always a word: a position has its own option
        if task.name != "token-classification":
            raise InputError(f"--at-position is not for a {task.name} model (it is for token-classification).")
        spec = {**spec, "at": args.at_position}
    if task.name in _NEEDS and spec[_NEEDS[task.name][0]] is None:
        raise InputError(f"{type(model).__name__} is a {task.name} model: give {_NEEDS[task.name][1]}.")
    inputs, target, options = spec_job(spec, task, _option)
    for option in ("pooling", "similarity"):  # how the model's output is read: one choice for the whole model
        if getattr(args, option) is not None:
            if option not in task.options:
                takers = [name for name, other in TASKS.items() if option in other.options]
                raise InputError(f"--{option} is not for a {task.name} model (it is for {' and '.join(takers)}).")
            options[option] = getattr(args, option)
    exp = attnlrp.explain(
        model,
        tokenizer,
        inputs,
        target=target,
        gradient_checkpointing=args.gradient_checkpointing,
        **_method(args),
        **options,
    )
    shown = exp.words() if args.words else exp
    shown.show(color=False if args.no_color else None)
    if args.top:
        _print_top(shown, args.top)
    if args.json:
        print(f"saved {exp.save(args.json)}")
    if args.html:
        print(f"saved {shown.save_html(args.html)}")


def _refuse_audio(model) -> None:
    """The command line reads text and images: an audio model is explained from Python."""
    from .errors import InputError

    if getattr(model, "main_input_name", None) == "input_features":
        raise InputError(
            f"{type(model).__name__} hears audio, and the command line explains text and images: explain audio from "
            "Python, attnlrp.explain(model, processor, waveform) or attnlrp.explain_generation (docs/tasks.md)."
        )


def _option(name: str) -> str:
    """An option as the command line spells it: ``target_id`` -> ``--target-id``."""
    return f"--{name.replace('_', '-')}"


def _options_given(args, names: Sequence[str]) -> list[str]:
    """The options of ``names`` given on the command line, as they are spelt there."""
    return [_option(name) for name in names if getattr(args, name) not in (None, False)]


#: What an image classifier's explanation reads on the command line; the other one-prompt options are text's
_IMAGE_OPTIONS = ("target", "target_id", "label", "image", "json", "html")


def _explain_image(args, model, processor) -> None:
    import attnlrp

    from .dataset import read_image
    from .errors import InputError

    if args.image is None:
        raise InputError(f"{type(model).__name__} explains an image's class: give the image (--image PATH).")
    ignored = _options_given(args, [name for name in _ONE_PROMPT if name not in _IMAGE_OPTIONS])
    ignored += ["a prompt"] if args.prompt is not None else []
    ignored += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    if ignored:
        raise InputError(
            f"{type(model).__name__} explains an image's class: {', '.join(ignored)} would be ignored; leave "
            "it out (give the class with --label NAME or --target-id INDEX)."
        )
    given = [v for v in (args.label, args.target, args.target_id) if v is not None]
    if len(given) > 1:
        raise InputError("Give the class once: --label NAME (or --target NAME) or --target-id INDEX.")
    target = given[0] if given else None
    exp = attnlrp.explain_image(model, [read_image(args.image)], target=target, processor=processor, **_method(args))[0]
    print(repr(exp))
    if args.json:
        print(f"saved {exp.save(args.json)}")
    if args.html:
        print(f"saved {exp.save_html(args.html)}")


#: Options of one prompt: with --input, each line gives its own
_ONE_PROMPT = (
    "target",
    "target_id",
    "contrast",
    "answer",
    "log_prob",
    "label",
    "pair",
    "pooling",
    "similarity",
    "at",
    "at_position",
    "image",
    "chat",
    "system",
    "top",
    "words",
    "json",
    "html",
)


def _explain_many(args, model, tokenizer) -> None:
    from .dataset import explain_dataset
    from .errors import InputError

    if not args.output:
        raise InputError("--input needs --output: the file the results are written to (one JSON line each).")
    _refuse_audio(model)
    reading = _options_given(args, ["pooling", "similarity"])
    if reading:
        raise InputError(
            f"{', '.join(reading)} with --input: a dataset run explains with the model's own pooling and the cosine "
            "similarity; explain one prompt to choose them."
        )
    one_prompt = _options_given(args, _ONE_PROMPT)
    if one_prompt:
        raise InputError(
            f'{", ".join(one_prompt)} with --input: give what to explain as fields of each input line ("target", '
            '"answer", "chat", ...); --top, --words, --json and --html are for one prompt.'
        )
    print(
        explain_dataset(
            model,
            tokenizer,
            args.input,
            args.output,
            batch_size=args.batch_size,
            progress=not args.quiet,
            gradient_checkpointing=args.gradient_checkpointing,
            **_method(args),
        )
    )


def _generate(args, model, tokenizer) -> None:
    import attnlrp

    from .dataset import chat_messages, read_image
    from .errors import InputError
    from .tasks import task_for

    _refuse_audio(model)
    task = task_for(model).name
    if task == "vision-language" and args.image is None:
        raise InputError(f"{type(model).__name__} is a vision-language model: give the image, --image PATH.")
    if task != "vision-language" and args.image is not None:
        raise InputError(f"{type(model).__name__} is a {task} model: --image is for vision-language models.")
    prompt = chat_messages(args.prompt, args.system, args.chat)
    images = {"images": read_image(args.image)} if args.image else {}
    gen = attnlrp.explain_generation(
        model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, **_method(args), **images
    )
    print(repr(gen))
    gen.show(color=False if args.no_color else None)
    if args.json:
        print(f"saved {gen.save(args.json)}")
    if args.html:
        print(f"saved {gen.save_html(args.html)}")


def _audit(args, model, tokenizer) -> int:
    import attnlrp

    from .engine.audit import example_decoder
    from .errors import InputError
    from .methods import get_method

    inputs = None  # the engine's example: an image, log-mel features, a decoder start for encoder-decoders
    if getattr(model, "main_input_name", "input_ids") == "input_ids":
        ids = tokenizer("The Eiffel Tower is located in", return_tensors="pt").input_ids
        inputs = {"input_ids": ids, **example_decoder(model)}
    if not args.check:
        print(attnlrp.audit(model, inputs, **_method(args)))
        return 0
    if args.method and get_method(args.method).name != "cp-lrp":
        raise InputError(
            f"--check measures conservation under CP-LRP (exact on the bias-free copy it runs), not {args.method}: "
            "leave --method out, or audit that method's ops without --check."
        )
    report = attnlrp.check(model, inputs)
    print(report)
    return 0 if report.ok else 1


def _evaluate(args, model, tokenizer) -> None:
    from .evaluate.command import run

    run(args, model, tokenizer)


def _latent(args, model, tokenizer) -> None:
    from .latent.command import run

    run(args, model, tokenizer)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "explain" and not (args.prompt or args.input or args.image):
        parser.error("explain needs a prompt, or --input prompts.jsonl --output results.jsonl")
    if args.command == "explain" and args.output and not args.input:
        parser.error("--output is the results file of --input prompts.jsonl; one prompt's go to --json or --html")
    from .errors import AttnLRPError
    from .sharding import merge, process_group

    try:
        if args.command == "merge":
            print(f"merged {merge(args.output, args.world)}")
            return 0
        with process_group():
            return _run(args)
    except (AttnLRPError, FileNotFoundError, ModuleNotFoundError, ValueError) as error:
        print(f"attnlrp: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path to write that is a folder, or can't be written
        print(f"attnlrp: error: {_path_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupted:
        print(f"attnlrp: {str(interrupted) or 'interrupted'}", file=sys.stderr)
        return 130


def _path_error(error: OSError) -> str:
    """One line for an OSError: the path it names, why it can't be used and what to give instead."""
    if error.filename is None:
        return str(error)
    if isinstance(error, IsADirectoryError):
        return f"{error.filename} is a folder: give the path of a file in it."
    if isinstance(error, FileExistsError):  # making the folders of an output path
        return f"{error.filename} is a file where the output path needs a folder: give another path."
    if isinstance(error, PermissionError):
        return f"{error.filename}: permission denied: give a path you may write to."
    return f"Can't use {error.filename}: {error.strerror}; give another path."


#: The files each command writes, by option, with a file name to suggest where a folder is given
_WRITES = {
    "explain": {"json": "explanation.json", "html": "explanation.html", "output": "results.jsonl"},
    "generate": {"json": "generation.json", "html": "generation.html"},
    "evaluate": {"output": "results.json"},
    "latent card": {"html": "card.html"},
    "latent browse": {"html": "atlas.html"},
}


def _check_outputs(args) -> None:
    """Each file the command will write checked (not a folder, writable) and its folder made, before the model
    loads: a bad path is found before minutes of work, not after them."""
    from .dataset import prepare_output

    command = f"{args.command} {args.latent_command}" if args.command == "latent" else args.command
    for option, example in _WRITES.get(command, {}).items():
        if getattr(args, option) is not None:
            prepare_output(getattr(args, option), example)


def _run(args) -> int:
    """Check the output paths, load the model and run the command (inside the launcher's process group, where
    there is one)."""
    _check_outputs(args)
    browsing = args.command == "latent" and args.latent_command == "browse"  # reads an atlas, needs no model
    model, tokenizer = (None, None) if browsing else _load(args)
    run = {"generate": _generate, "audit": _audit, "evaluate": _evaluate, "latent": _latent}.get(
        args.command, _explain_many if getattr(args, "input", None) else _explain_one
    )
    return run(args, model, tokenizer) or 0


if __name__ == "__main__":
    sys.exit(main())
