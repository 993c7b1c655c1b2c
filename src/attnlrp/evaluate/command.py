"""``attnlrp evaluate``: its arguments and what it does with them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..cli_options import add_model_arguments, method_option
from ..methods import method_names
from .perturbation import MODES
from .report import COLUMNS, headline, write_report
from .runner import run_suite
from .suites import SUITES, needle

DEFAULT_METHODS = "attnlrp,cp-lrp,input_x_gradient,random"

EXAMPLES = """examples:
  attnlrp evaluate --suite facts --limit 50 --output facts.json
  attnlrp evaluate --suite needle --lengths 128,512 --methods attnlrp,gradient,random --output needle.json
  attnlrp evaluate --suite perturbation --mode replace --exclude-first --output perturbation.json

A rerun with the same --output resumes from its journal (<output>.jsonl).
"""


def _methods(text: str) -> list[str]:
    """--methods: names, or methods with options as their labels write them, separated by commas outside the
    options' parentheses ("integrated_gradients(steps=8),random")."""
    names = [method_option(m.strip()) for m in re.split(r",(?![^()]*\))", text) if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one method, e.g. --methods attnlrp,gradient")
    return names


def _lengths(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths takes token counts separated by commas, not {text!r}") from None


def _output(text: str) -> Path:
    """--output: the results JSON, whose journal (.jsonl) and report (.html) are named from it."""
    path = Path(text)
    if path.suffix in (".jsonl", ".html"):
        raise argparse.ArgumentTypeError(
            f"{text} is the results JSON, and its journal (.jsonl) and report (.html) are named beside it with those "
            f"suffixes, so one would overwrite another: give a .json path, e.g. {path.with_suffix('.json')}"
        )
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``attnlrp evaluate``."""
    parser.add_argument(
        "--suite",
        required=True,
        choices=SUITES,
        help="what to measure: a ground-truth suite "
        "(pointing game, recovery) or 'perturbation' (MoRF/LeRF curves, ABPC, AOPC)",
    )
    parser.add_argument(
        "--methods",
        type=_methods,
        default=_methods(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(method_names())}; with options as "
        f"'integrated_gradients(steps=8)' (default: {DEFAULT_METHODS})",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--limit", type=int, default=20, help="how many items the model gets right to evaluate (default: 20)"
    )
    parser.add_argument(
        "--output",
        type=_output,
        default=Path("evaluation.json"),
        help="results JSON; the journal (.jsonl), report "
        "(.html) and figures (-*.png) go beside it; rerunning resumes (default: evaluation.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated items (default: 0)")
    parser.add_argument(
        "--lengths",
        type=_lengths,
        default=list(needle.LENGTHS),
        help="needle suite: context lengths in tokens (default: 128,256,512,1024,2048)",
    )
    parser.add_argument("--steps", type=int, default=10, help="perturbation: points per curve after 0%% (default: 10)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="zero",
        help="perturbation: zero the embeddings (default), replace by a neutral token, or remove the tokens",
    )
    parser.add_argument(
        "--exclude-first", action="store_true", help="perturbation: never rank or perturb the first token"
    )
    parser.add_argument(
        "--raw-logit",
        action="store_true",
        help="perturbation: explain and perturb the answer's bare logit instead of its difference to the mean logit",
    )


def run(args: argparse.Namespace, model, tokenizer) -> None:
    """Run the suite (this process's share under a launcher), write the results and report, and print the headline
    table (rank 0, once every process is done)."""
    output = args.output
    results = run_suite(
        model,
        tokenizer,
        args.suite,
        args.methods,
        args.limit,
        output,
        seed=args.seed,
        lengths=args.lengths,
        steps=args.steps,
        mode=args.mode,
        exclude_first=args.exclude_first,
        centered=not args.raw_logit,
        progress=not args.quiet,
    )
    if results is None:  # another process summarises, or the shards are gathered by hand (the runner said how)
        return
    written = write_report(results, output.with_suffix(".html"))
    keys = headline(results)
    print(f"{args.suite}: {results['kept']} items kept of {results['tried']} tried; mean [95% bootstrap interval]")
    print(f"{'method':<22}" + "".join(f"{COLUMNS[k]:<30}" for k in keys))
    for name in results["methods"]:
        cells = [results["metrics"][name][k] for k in keys]
        print(f"{name:<22}" + "".join(f"{_cell(c):<30}" for c in cells))
    print(f"saved {output}, " + ", ".join(map(str, written)))


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"
