"""``attnlrp latent collect|card|browse|steer``: their arguments and what they do with them."""

from __future__ import annotations

import argparse

from ..cli_options import add_model_arguments, html_path
from ..errors import LatentError
from ..sharding import current_shard, finish, shard_path
from .steer import MAX_NEW_TOKENS

#: Each subcommand's examples (``attnlrp latent SUBCOMMAND --help`` ends with them).
SUBCOMMAND_EXAMPLES = {
    "collect": [
        'attnlrp latent collect --corpus labelled --sites "model.layers.*.mlp.down_proj" --output atlas  (resumes)',
        'attnlrp latent collect --corpus texts.jsonl --sites "model.layers.12" --output part0 --shard 0/2',
        "attnlrp latent collect --corpus labelled --sae smollm2-135m-layer14 --sites model.layers.14@sae --output sae",
    ],
    "card": ["attnlrp latent card --atlas atlas --unit model.layers.20.mlp.down_proj:17 --html unit.html"],
    "browse": ["attnlrp latent browse --atlas atlas --html atlas.html"],
    "steer": [
        'attnlrp latent steer "My favourite hobby is" --unit model.layers.20.mlp.down_proj:17 --strengths 0,10,20',
        'attnlrp latent steer "I think that" --sae smollm2-135m-layer14 --unit model.layers.14@sae:42 --strengths 0,20',
    ],
}


def _examples(*commands: str) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for c in commands for line in SUBCOMMAND_EXAMPLES[c])


EXAMPLES = _examples(*SUBCOMMAND_EXAMPLES)


def _shard(text: str) -> tuple[int, int]:
    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard is RANK/WORLD, e.g. 0/4, not {text!r}") from None
    return rank, world


def _strengths(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--strengths takes numbers separated by commas, not {text!r}") from None


def _unit(text: str) -> tuple[str, int]:
    site, _, index = text.rpartition(":")
    try:
        return site, int(index)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--unit is SITE:INDEX, e.g. model.layers.3.mlp.down_proj:17, not {text!r}"
        ) from None


def _model_options(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument(
        "--sae", action="append", default=[], metavar="NAME", help="a cached SAE (or its folder); repeatable"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``attnlrp latent``."""
    commands = parser.add_subparsers(dest="latent_command", required=True, metavar="SUBCOMMAND")
    co = commands.add_parser(
        "collect",
        help="one pass over a corpus -> an atlas folder (resumes if interrupted)",
        epilog=_examples("collect"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    co.add_argument(
        "--corpus", required=True, help="a JSONL file (a text or {'text', 'topic'} per line), or 'labelled' (built in)"
    )
    co.add_argument("--sites", action="append", required=True, help="a module-path glob (repeatable); @sae: the --sae")
    co.add_argument("--output", required=True, help="the atlas folder (also the checkpoint: rerunning resumes)")
    co.add_argument("--top-k", type=int, default=16, help="contexts kept per unit and mode (default: 16)")
    co.add_argument("--batch-size", type=int, default=16, help="contexts per forward and backward (default: 16)")
    co.add_argument("--max-tokens", type=int, default=64, help="tokens per context (default: 64)")
    co.add_argument(
        "--method", default="attnlrp", choices=("attnlrp", "cp-lrp"), help="the relevance (default: attnlrp)"
    )
    co.add_argument(
        "--shard",
        type=_shard,
        help="RANK/WORLD: this process's share (default: from torchrun or accelerate launch, else 0/1); each "
        "shard writes OUTPUT.shard-RANK-of-WORLD, merged into OUTPUT at the end of a launched run",
    )
    _model_options(co)
    ca = commands.add_parser(
        "card",
        help="one unit of an atlas -> an HTML card",
        epilog=_examples("card"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("--atlas", required=True, help="the atlas folder")
    ca.add_argument("--unit", type=_unit, required=True, help="SITE:INDEX")
    ca.add_argument("--html", type=html_path, required=True, help="where to write the card (.html)")
    ca.add_argument("--conditional", type=int, default=3, help="conditional heatmaps to compute (default: 3)")
    _model_options(ca)
    br = commands.add_parser(
        "browse",
        help="an atlas -> one searchable HTML page of every unit's card",
        epilog=_examples("browse"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    br.add_argument("--atlas", required=True, help="the atlas folder")
    br.add_argument("--html", type=html_path, required=True, help="where to write the page (.html)")
    br.add_argument("--sites", action="append", help="only these sites of the atlas (repeatable)")
    st = commands.add_parser(
        "steer",
        help="a prompt continued at several strengths, side by side",
        epilog=_examples("steer"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("prompt", help="the prompt to continue")
    st.add_argument("--unit", type=_unit, action="append", required=True, help="SITE:INDEX (repeatable)")
    st.add_argument("--strengths", type=_strengths, default=[0.0, 4.0, 8.0], help="comma-separated (default: 0,4,8)")
    st.add_argument("--mode", default="add", choices=("add", "clamp", "scale"), help="how (default: add)")
    st.add_argument(
        "--max-new-tokens",
        type=int,
        default=MAX_NEW_TOKENS,
        help=f"tokens to generate (default: {MAX_NEW_TOKENS}, as generate_steered)",
    )
    _model_options(st)


def _saes(names: list[str]) -> dict:
    from .sae import load_sae

    return {sae.name: sae for sae in map(load_sae, names)}


def _site(name: str, saes: dict):
    """A site as the API takes it: a pattern, or the SAE an ``@sae`` name stands for."""
    if name.endswith("@sae"):
        if name not in saes:
            raise LatentError(f"{name} is an SAE's site: load that SAE with --sae NAME (the cached SAE's name).")
        return saes[name]
    return name


def run(args: argparse.Namespace, model, tokenizer) -> None:
    """Do the subcommand, and print what was written."""
    from .atlas import FeatureAtlas
    from .collect import collect
    from .corpus import labelled_corpus
    from .sites import resolve_one
    from .steer import generate_steered

    if args.latent_command == "browse":  # the atlas alone: no model is loaded
        atlas = FeatureAtlas.load(args.atlas)
        print(f"{atlas!r}\nsaved {atlas.to_html(args.html, sites=args.sites)}")
        return
    saes = _saes(args.sae)
    if args.latent_command == "collect":
        corpus = (
            [{"text": r.text, "topic": r.topic} for r in labelled_corpus()]
            if args.corpus == "labelled"
            else args.corpus
        )
        rank, world = args.shard or current_shard()
        folder = args.output if world == 1 else str(shard_path(args.output, rank, world))
        atlas = collect(
            model,
            tokenizer,
            corpus,
            [_site(s, saes) for s in args.sites],
            top_k=args.top_k,
            method=args.method,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            shard=(rank, world),
            checkpoint=folder,
            progress=not args.quiet,
        )
        atlas.read_outputs().save(folder)
        print(f"{atlas!r}\nsaved {folder}")
        if world > 1 and finish(args.output, world) and rank == 0:  # rank 0 merged them
            print(f"merged {world} shards into {args.output}")
    elif args.latent_command == "card":
        atlas = FeatureAtlas.load(args.atlas, model, tokenizer, list(saes.values()))
        card = atlas.card(*args.unit, conditional=args.conditional)
        print(f"{card!r}\nsaved {card.save_html(args.html)}")
    else:
        units = [(_site(site, saes), index) for site, index in args.unit]
        named = [(resolve_one(model, site).name, index) for site, index in units]
        twice = next((unit for n, unit in enumerate(named) if unit in named[:n]), None)
        if twice is not None:  # as steer refuses a repeated unit
            raise LatentError(f"--unit {twice[0]}:{twice[1]} is given twice: give each unit once.")
        width = max(len(f"{s:g}") for s in args.strengths)
        texts = [  # all first: a bad unit or mode is one error line, with no table begun
            generate_steered(model, tokenizer, [args.prompt], dict.fromkeys(units, s), args.mode, args.max_new_tokens)[
                0
            ]
            for s in args.strengths
        ]
        print(f"{args.prompt!r} continued with {', '.join(f'{s}:{i}' for s, i in args.unit)} ({args.mode}):")
        for strength, text in zip(args.strengths, texts):
            print(f"  {strength:>{width}g} | {text!r}")
