"""The ``cassia-sc`` command: annotate an existing ``.h5ad`` file, or a marker table.

What it prints passes through :func:`cassia_sc._io.printable`: a cluster name, a label or
an error that came from a file or a model cannot move the cursor, retitle the window or
write to the clipboard of the terminal it is shown in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import openai
import pandas as pd
from anndata import AnnData, read_h5ad

from ._docs import cli_help
from ._io import check_writable, format_size, printable, remove_stale_temporaries
from ._keys import Default, Key, Limit
from ._version import __version__
from .agents import PIPELINES
from .agents.harmoniser import harmonised_columns
from .cache import cache_summary, clear_cache, default_cache_dir
from .compat import run_batch_to_files
from .costs import dollars_text
from .datasets import pbmc68k_example_path
from .errors import (
    BatchInterrupted,
    CassiaError,
    FileBusy,
    LLMError,
    MissingAPIKeyError,
    NotWritable,
)
from .evidence import DataHandle
from .export import bounded, output_paths, write_outputs
from .export.adata import check_key_added, restricted_columns, uns_record
from .export.limits import cut
from .h5ad import (
    FileMarkers,
    locked,
    read_embedding,
    read_for_annotation,
    read_outline,
    write_annotation,
)
from .many import input_output_name
from .provider_batches import JobStore
from .results import BatchResult
from .rounds import collect
from .subclusters import Population
from .tl._subclusters import file_label_columns, read_population
from .workflow import run_annotations

logger = logging.getLogger("cassia_sc")

#: Example data sets a user can name instead of a file, and what gives their (cached) file.
BUNDLED_EXAMPLES = {"pbmc68k_reduced": pbmc68k_example_path}

#: Exit status when the run finished but some clusters failed.
EXIT_SOME_FAILED = 3

_ANNOTATE_EXAMPLES = """\
  # add labels to a file in place (reads obs, var and uns only; X is never loaded)
  export OPENROUTER_API_KEY=...
  cassia-sc annotate data.h5ad --tissue lung --species human --model openai/gpt-4o-mini

  # the bundled example, written to a new file, with CASSIA's four output files
  cassia-sc annotate pbmc68k_reduced --tissue blood --species human --model openai/gpt-4o-mini --output pbmc_annotated.h5ad --output-name pbmc

  # several files in one run (a marker list found in several is asked once), one name per type
  cassia-sc annotate donor1.h5ad donor2.h5ad donor3.h5ad --tissue blood --species human --model openai/gpt-4o-mini --harmonise --output-name run

  # a local model through Ollama; see the prompts and their cost first
  cassia-sc annotate data.h5ad --tissue blood --species human --model llama3.1 --provider http://localhost:11434/v1 --dry-run
"""  # noqa: E501 - whole commands on one line each, to copy and paste

_BATCH_EXAMPLES = """\
  # a Seurat FindAllMarkers table, as CASSIA's runCASSIA_batch
  export OPENROUTER_API_KEY=...
  cassia-sc batch markers.csv --output-name pbmc --tissue blood --species human --model openai/gpt-4o-mini

  # a two-column table (cluster, comma-separated genes), with its columns named
  cassia-sc batch clusters.tsv --celltype-column cluster --gene-column-name genes --output-name run --species mouse --model openai/gpt-4o-mini --dry-run
"""  # noqa: E501 - whole commands on one line each, to copy and paste

_CACHE_EXAMPLES = """\
  # the reply cache: where it is and how large; remove what was stored over 30 days ago
  cassia-sc cache info
  cassia-sc cache clear --older-than 30d
"""

_FOOTER = """
API keys come from OPENROUTER_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY or, for a base
URL, CASSIA_API_KEY or CUSTOMIZED_API_KEY; never from the command line, which others can
read.

exit status: 0 success, 1 error, 2 usage error (also: a bad option value or input file, a
--key-added that would replace data not written by cassia-sc, an output that cannot be
written; all found before any model is called), 3 some clusters failed, 130 interrupted.
"""


def _epilog(*examples: str) -> str:
    return "examples:\n\n" + "\n".join(examples) + _FOOTER


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and each option's default shown after its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # None and False mean "not given": the help says what that does. A help that names
        # its default already (the shared texts do, for Python's docstrings) says it once.
        unset = action.default is None or action.default is False  # 0.0 is a default
        if unset or action.default == argparse.SUPPRESS or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cassia-sc`` (also used to document the command).

    Returns
    -------
    argparse.ArgumentParser
        The parser, with the ``annotate`` and ``batch`` subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="cassia-sc",
        description="Annotate single-cell clusters with large language models.",
        epilog=_epilog(_ANNOTATE_EXAMPLES, _BATCH_EXAMPLES, _CACHE_EXAMPLES),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    annotate = commands.add_parser(
        "annotate",
        help="add cell-type labels to .h5ad files (in place by default)",
        description=(
            "Annotate the clusters of an .h5ad file from its uns['rank_genes_groups'] and add "
            "obs[KEY_celltype], obs[KEY_subtype] and uns[KEY] to it, without loading X. The "
            "file is replaced only once the new one is complete, and keeps its permissions; "
            "two runs on one file take turns, so neither loses the other's labels. Several "
            "files are annotated in one run (one pool of calls, one cache, one budget; a "
            "marker list found in several files is asked once), then written one at a time."
        ),
        epilog=_epilog(_ANNOTATE_EXAMPLES),
        formatter_class=_HelpFormatter,
    )
    annotate.add_argument(
        "input",
        metavar="INPUT",
        nargs="+",
        help="one or more .h5ad files, each with its own rank_genes_groups, all read and "
        "checked before any call; or a bundled example: " + ", ".join(BUNDLED_EXAMPLES),
    )
    annotate.add_argument(
        "--output",
        type=Path,
        help="write here instead of editing INPUT in place (one INPUT only)",
    )
    annotate.add_argument(
        "--harmonise",
        nargs="?",
        const="model",
        choices=["model", "ontology"],
        metavar="METHOD",
        help="after the run, give the labels of one cell type one name across the inputs "
        "(T cells, T cell, T lymphocyte: T cell), in obs[KEY_celltype_harmonised] beside "
        "the labels: with one call to the model (alone, or 'model'), or offline by the Cell "
        "Ontology term each label maps to ('ontology', needs the ontology extra)",
    )
    annotate.add_argument("--groupby", help=cli_help("groupby"))
    annotate.add_argument("--key", default=Key.uns.markers, help=cli_help("key"))
    annotate.add_argument(
        "--key-added",
        default=Default.key_added,
        help=cli_help("key_added")
        + " Refused when empty, with '/', or when it would replace an uns entry or obs "
        "columns that cassia-sc did not write (e.g. rank_genes_groups, neighbors).",
    )
    annotate.add_argument(
        "--no-wait",
        action="store_true",
        help="when another cassia-sc is writing the same file, stop with an error instead "
        "of waiting for it to finish",
    )
    annotate.add_argument("--gene-symbols", help=cli_help("gene_symbols"))
    annotate.add_argument(
        "--restrict-to",
        nargs="+",
        metavar=("COLUMN", "VALUE"),
        help=cli_help("restrict_to") + " Give the column, then its values.",
    )
    # the required options first in --help, then the repeated runs
    _add_run_options(annotate, retries=_RETRIES_ANNOTATE, table=False)
    repeated = annotate.add_argument_group("repeated runs")
    repeated.add_argument(
        "--n-runs", type=int, default=Default.n_runs, metavar="N", help=cli_help("n_runs")
    )
    repeated.add_argument("--models", nargs="+", metavar="MODEL", help=cli_help("models"))
    repeated.add_argument(
        "--agreement-threshold",
        type=float,
        default=Default.agreement_threshold,
        metavar="SHARE",
        help=cli_help("agreement_threshold"),
    )

    batch = commands.add_parser(
        "batch",
        help="annotate a marker table (Seurat, Scanpy or two columns), as runCASSIA_batch",
        description="Annotate every cluster of a marker table and write CASSIA's files.",
        epilog=_epilog(_BATCH_EXAMPLES),
        formatter_class=_HelpFormatter,
    )
    batch.add_argument("markers", metavar="MARKERS", help="marker table (CSV or TSV)")
    _add_run_options(batch, retries=_RETRIES_BATCH, table=True)
    _add_cache_command(commands)
    _add_jobs_command(commands)
    return parser


def _add_cache_command(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser(
        "cache",
        help="show or clear the cache of model replies",
        description=(
            "Every model reply is kept in a cache folder, so that a re-run costs nothing\n"
            "and an interrupted run resumes. The folder grows with every new request: see\n"
            "how large it is, and remove what is no longer needed. The folder is\n"
            "--cache-dir, else $CASSIA_SC_CACHE_DIR, else the user's cache folder\n"
            "(~/.cache/cassia_sc on Linux, ~/Library/Caches/cassia_sc on macOS)."
        ),
        epilog=(
            "examples:\n\n  cassia-sc cache info\n  cassia-sc cache clear --older-than 30d\n"
            "  cassia-sc cache clear --cache-dir runs/cache"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info",
        help="the folder, how many replies it holds and their size",
        description="Show the cache folder, how many replies it holds, their size and age.",
    )
    clear = actions.add_parser(
        "clear",
        help="remove replies (all, or those stored before --older-than)",
        description=(
            "Remove cached replies: all of them, or with --older-than only those stored "
            "longer ago. Only the cache's own files are removed. A run that needs a removed "
            "reply asks the model again (and pays for it)."
        ),
    )
    clear.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="remove only replies stored more than AGE ago: a number and a unit, s, m, h, d "
        "or w (e.g. 30d, 12h, 2w)",
    )
    for parser in (info, clear):
        parser.add_argument(
            "--cache-dir",
            type=Path,
            metavar="DIR",
            help="the cache folder (default: $CASSIA_SC_CACHE_DIR, else the user's cache folder)",
        )


def _add_jobs_command(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list the provider batches sent by --batch-api runs, or collect their results",
        description=(
            "A run with --batch-api sends its requests as provider batches, answered within\n"
            "a day. Each batch is remembered in the cache folder until its results are in\n"
            "the cache: run the same command again to go on where it was (nothing is sent\n"
            "twice), or collect the results of the batches that have ended now."
        ),
        epilog="examples:\n\n  cassia-sc jobs\n  cassia-sc jobs collect --wait",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = jobs.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="each batch: provider, state, requests (default)")
    collect_ = actions.add_parser(
        "collect", help="ask about every open batch; put the results of those ended in the cache"
    )
    collect_.add_argument(
        "--wait", action="store_true", help="poll until every open batch has ended"
    )
    for parser in (jobs, listing, collect_):
        parser.add_argument(
            "--cache-dir",
            type=Path,
            metavar="DIR",
            default=argparse.SUPPRESS if parser is not jobs else None,
            help="the cache folder the runs used (default: $CASSIA_SC_CACHE_DIR, else the "
            "user's cache folder)",
        )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """Read an age such as ``30d`` into seconds (the type of ``--older-than``)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not found:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: give a number and a unit, s, m, h, d or w (e.g. 30d)"
        )
    return float(found[1]) * _UNITS[found[2]]


def _max_tokens(text: str) -> int | None:
    """Read ``--max-tokens``: a whole number of tokens, 0 for none sent."""
    try:
        tokens = int(text)
    except ValueError:
        tokens = -1
    if tokens < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (0 sends none)")
    return tokens or None


#: What --max-retries counts, per subcommand: both run through run_batch, whose retries
#: are per request, not CASSIA's repeats of a whole cluster (runCASSIA_batch in Python).
_RETRIES_ANNOTATE = " Per request, as in tl.annotate."
_RETRIES_BATCH = (
    " Per request, as in run_batch; not CASSIA's runCASSIA_batch meaning (repeats of a "
    "whole cluster on top of 2 retries per request), which only the Python function has."
)


def _add_run_options(parser: argparse.ArgumentParser, *, retries: str, table: bool) -> None:
    """Add the options of a run; ``table``: a marker table's column options (``batch``)."""
    required = parser.add_argument_group("required")
    required.add_argument("--species", required=True, help=cli_help("species"))
    what = parser.add_argument_group("what to annotate with")
    what.add_argument("--tissue", help=cli_help("tissue"))
    if table:  # batch has no --models: its model is required like its output files
        required.add_argument("--model", required=True, help=cli_help("model"))
        required.add_argument(
            "--output-name", required=True, metavar="PREFIX", help=cli_help("output_name")
        )
    else:
        what.add_argument("--model", help=cli_help("model") + " Required unless --models.")
    what.add_argument("--provider", default=Default.provider, help=cli_help("provider"))
    what.add_argument("--additional-info", help=cli_help("additional_info"))
    what.add_argument("--parent", metavar="CELL_TYPE", help=cli_help("parent"))
    markers = parser.add_argument_group("which markers")
    if table:
        markers.add_argument("--celltype-column", help=cli_help("celltype_column"))
        markers.add_argument("--gene-column-name", help=cli_help("gene_column_name"))
    markers.add_argument(
        "--n-genes", type=int, default=Default.n_genes, metavar="N", help=cli_help("n_genes")
    )
    markers.add_argument(
        "--ranking-method",
        choices=["avg_log2FC", "p_val_adj", "pct_diff", "Score"],
        default=Default.ranking_method,
        help=cli_help("ranking_method"),
    )
    markers.add_argument(
        "--ascending",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=cli_help("ascending") + " Default: the method's own direction.",
    )
    sure = parser.add_argument_group("how sure is each label")
    sure.add_argument("--score", action="store_true", help=cli_help("score"))
    sure.add_argument("--score-model", metavar="MODEL", help=cli_help("score_model"))
    sure.add_argument("--score-provider", metavar="PROVIDER", help=cli_help("score_provider"))
    sure.add_argument(
        "--boost",
        dest="boost_below",
        action="store_const",
        const=Default.boost_below,
        help=f"boost the doubtful clusters (--boost-below {Default.boost_below:.0f})",
    )
    sure.add_argument("--boost-below", type=float, metavar="SCORE", help=cli_help("boost_below"))
    sure.add_argument(
        "--boost-rounds",
        type=int,
        default=Default.boost_rounds,
        metavar="N",
        help=cli_help("boost_rounds"),
    )
    calls = parser.add_argument_group("model calls")
    calls.add_argument(
        "--validator-involvement",
        choices=list(PIPELINES),
        default=Default.validator_involvement,
        help=cli_help("validator_involvement"),
    )
    calls.add_argument(
        "--temperature", type=float, default=Default.temperature, help=cli_help("temperature")
    )
    calls.add_argument(
        "--reasoning",
        choices=["low", "medium", "high"],
        help=cli_help("reasoning") + " Default: none asked for.",
    )
    calls.add_argument(
        "--max-workers",
        type=int,
        default=Default.max_workers,
        metavar="N",
        help=cli_help("max_workers"),
    )
    calls.add_argument(
        "--max-retries",
        type=int,
        default=Default.max_retries,
        metavar="N",
        help=cli_help("max_retries") + retries,
    )
    calls.add_argument("--timeout", type=float, default=Default.timeout, help=cli_help("timeout"))
    calls.add_argument(
        "--max-tokens",
        type=_max_tokens,
        default=Default.max_tokens,
        metavar="N",
        help="most tokens one reply may have, sent with every request (0: none sent, the "
        "server decides); a reply cut off at it is asked again once with twice the room. "
        "Lower it for a small local model that does not stop: llama-server's -n does not "
        "cap a request that sends it",
    )
    calls.add_argument(
        "--batch-api",
        nargs="?",
        const=True,
        default=False,
        metavar="API",
        help="send the calls through the provider's batch API (half the price, answered "
        "within a day): alone for OpenAI or Anthropic, or with API (openai or anthropic) for "
        "a base URL that speaks one. The batches are remembered in the cache folder: run the "
        "same command again to go on where it was, paying nothing twice (cassia-sc jobs "
        "lists them)",
    )
    calls.add_argument(
        "--max-cost",
        type=float,
        metavar="DOLLARS",
        help="stop sending calls before the run spends more than this (annotation, scores "
        "and boosts together, at the models' prices: --prices, or OpenRouter's list); the "
        "clusters left are 'not run', and the same command with a larger budget goes on",
    )
    calls.add_argument(
        "--max-tokens-total",
        type=int,
        metavar="N",
        help="the same, in tokens (prompt and completion)",
    )
    calls.add_argument(
        "--batch-poll-interval",
        type=float,
        default=Default.batch_poll_interval,
        metavar="SECONDS",
        help="with --batch-api: seconds between the first polls of a batch, growing to a minute",
    )
    calls.add_argument("--requests-per-minute", type=float, help=cli_help("requests_per_minute"))
    run = parser.add_argument_group("cache and output")
    if not table:
        run.add_argument("--output-name", metavar="PREFIX", help=cli_help("output_name"))
    run.add_argument("--cache-dir", type=Path, help=cli_help("cache_dir"))
    run.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="show each step's calls, tokens and cost in dollars; call no model, write nothing",
    )
    run.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="for --dry-run: a CSV (model,prompt,completion: dollars per million tokens) or "
        "JSON price table, for models whose provider publishes no prices (OpenAI, Anthropic, "
        "a local server); OpenRouter's own prices are read without it",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.add_argument("--verbose", action="store_true", help="log retries and timings")


def _run_options(args: argparse.Namespace) -> dict:
    return {
        "tissue": args.tissue,
        "species": args.species,
        "model": args.model,
        "provider": args.provider,
        "max_workers": args.max_workers,
        "n_genes": args.n_genes,
        "additional_info": args.additional_info,
        "parent": args.parent,
        "validator_involvement": args.validator_involvement,
        "ranking_method": args.ranking_method,
        "ascending": args.ascending,
        "temperature": args.temperature,
        "reasoning": args.reasoning,
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "max_tokens": args.max_tokens,
        "requests_per_minute": args.requests_per_minute,
        "cache": not args.no_cache,
        "cache_dir": args.cache_dir,
        "dry_run": args.dry_run,
        "prices": args.prices,
        "batch_api": args.batch_api,
        "batch_poll_interval": args.batch_poll_interval,
        "max_cost": args.max_cost,
        "max_tokens_total": args.max_tokens_total,
        "progress": not args.quiet,
        "score": args.score,
        "score_model": args.score_model,
        "score_provider": args.score_provider,
        "boost_below": args.boost_below,
        "boost_rounds": args.boost_rounds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cassia-sc`` with ``argv`` (default: the command line).

    Parameters
    ----------
    argv
        The arguments, without the program name.

    Returns
    -------
    int
        The exit status: 0 success, 1 error, 2 usage error (a bad option value or input
        file), 3 some clusters failed, 130 interrupted.

    Examples
    --------
    >>> from cassia_sc.cli import main
    >>> main(["annotate", "pbmc68k_reduced", "--species", "human", "--tissue", "blood",
    ...       "--model", "any-model", "--dry-run", "--quiet"])
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = _flags(parser, args.command)
    logging.basicConfig(format="cassia-sc: %(message)s", level=logging.WARNING)
    with _printable_log():
        if args.command == "cache":
            return _cache(args)
        if args.command == "jobs":
            return _jobs(args)
        if not args.model and not getattr(args, "models", None):
            parser.error("--model is required (or --models for annotate)")
        if args.command == "annotate" and len(args.input) > 1:
            _one_input_only(parser, args)
        if args.verbose:  # ours only: the HTTP libraries would log every request
            logger.setLevel(logging.INFO)
        try:
            results = _annotate(args) if args.command == "annotate" else [("", _batch(args))]
        except BatchInterrupted:
            _say("cassia-sc: interrupted; finished clusters are kept in the cache.", sys.stderr)
            return 130
        except KeyboardInterrupt:
            _say("cassia-sc: interrupted.", sys.stderr)
            return 130
        except (CassiaError, FileNotFoundError, ValueError) as err:
            message, usage = _one_line(err), False
            # The model, the key variables, another run: their words are not the command's.
            if not isinstance(err, LLMError | MissingAPIKeyError | FileBusy):
                message, named = _as_flags(message, flags)
                usage = named or isinstance(err, ValueError | FileNotFoundError | NotWritable)
            _say(f"cassia-sc: error: {message}", sys.stderr)
            return 2 if usage else 1  # 2: what was typed is wrong, as argparse's errors
        if not args.quiet:
            _report_all(results)
        return EXIT_SOME_FAILED if any(result.failed for _, result in results) else 0


def _one_input_only(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the options of annotate that take one INPUT, given with several (status 2)."""
    taken = {
        "--output": args.output is not None,
        "--restrict-to": bool(args.restrict_to),
        "--n-runs": args.n_runs > 1,
        "--models": bool(args.models),
    }
    for flag, given in taken.items():
        if given:
            parser.error(
                f"{flag} takes one INPUT, not {len(args.input)}: with several, each file is "
                "annotated in place; run once per file for this option"
            )


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """Map each option's ``dest`` (the Python parameter) to its flag, for ``command``."""
    # argparse has no public way to reach a subcommand's parser or its options.
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for action in commands.choices[command]._actions:
        spelled = [s for s in action.option_strings if s.startswith("--") and s != "--help"]
        if spelled:
            # --boost and --boost-below share a dest: the flag spelled like it is meant
            same = f"--{action.dest.replace('_', '-')}"
            if same in spelled:
                flags[action.dest] = same
            else:
                flags.setdefault(action.dest, spelled[0])
    return flags


#: A parameter as our messages name it: ``n_genes=`` or ``n_genes must``.
_PARAMETER = re.compile(
    r"(?<![\w.\[\-'\"])(?P<name>[a-z][a-z0-9_]*)(?P<end>=(?P<value>\S?)| must\b)"
)


def _as_flags(message: str, flags: dict[str, str]) -> tuple[str, bool]:
    """Say ``--n-genes`` where the Python message says ``n_genes=``; and whether it did.

    The Python API speaks Python (``celltype_column='x'``); a shell user typed flags.
    """
    named = False

    def flag(found: re.Match) -> str:
        nonlocal named
        if found["name"] not in flags:
            return found[0]
        named = True
        if found["end"].startswith("="):  # name='x' -> --name 'x'; "pass name= and" -> --name
            return flags[found["name"]] + (f" {found['value']}" if found["value"] else "")
        return flags[found["name"]] + found["end"]

    return _PARAMETER.sub(flag, message), named


def _say(text: str, file: TextIO | None = None) -> None:
    """Print text that may hold a file's or a model's words, with no escape sequence."""
    print(printable(text), file=file or sys.stdout)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n")).strip() or type(err).__name__


class _PrintableRecords(logging.Filter):
    """Log records made printable and cut: their text may hold cluster names and labels."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(cut(record.getMessage(), Limit.text)), None
        return True


@contextmanager
def _printable_log() -> Iterator[None]:
    records = _PrintableRecords()
    logger.addFilter(records)
    try:
        yield
    finally:
        logger.removeFilter(records)


def _cache(args: argparse.Namespace) -> int:
    folder = args.cache_dir.expanduser() if args.cache_dir else default_cache_dir()
    if args.action == "clear":
        removed, freed = clear_cache(folder, older_than=args.older_than)
        left = cache_summary(folder)
        when = f" stored over {_age(args.older_than)} ago" if args.older_than is not None else ""
        replies = f"{removed:,} repl{'y' if removed == 1 else 'ies'}"
        _say(
            f"Removed {replies}{when} ({format_size(freed)}) from {folder}; "
            f"{left.entries:,} remain ({format_size(left.size)})."
        )
        return 0
    summary = cache_summary(folder)
    _say(f"Cache folder: {folder}{'' if folder.is_dir() else ' (not created yet)'}")
    _say(f"Replies: {summary.entries:,}, {format_size(summary.size)}")
    if summary.oldest is not None and summary.newest is not None:
        _say(f"Stored: {_date(summary.oldest)} to {_date(summary.newest)}")
    if summary.temporaries:
        _say(
            f"Left by interrupted writes: {summary.temporaries:,} temporary files "
            "(cassia-sc cache clear removes them)"
        )
    return 0


def _jobs(args: argparse.Namespace) -> int:
    folder = args.cache_dir.expanduser() if args.cache_dir else default_cache_dir()
    try:
        if args.action == "collect":
            jobs = collect(folder, wait=args.wait)
        else:
            jobs = JobStore(folder).jobs()
    except (CassiaError, openai.OpenAIError) as err:
        _say(f"cassia-sc: error: {_one_line(err)}", sys.stderr)
        return 1
    if not jobs:
        _say(f"No batches sent from runs on {folder}.")
        return 0
    for job in jobs:
        state = job.status + (f" ({job.provider_status})" if job.provider_status else "")
        _say(
            f"{job.id}  {job.api} at {job.provider}  {state}  {job.done:,} of "
            f"{job.total or len(job.keys):,} requests  sent {_date(job.created)}"
        )
    still = sum(job.open for job in jobs)
    if still:
        _say(
            f"{still} not collected yet: run the same command again, or cassia-sc jobs "
            "collect, once they have ended."
        )
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("weeks", 7 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def _date(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@dataclass
class _Input:
    """One INPUT of ``annotate``, read and checked before any model is called.

    Attributes
    ----------
    name
        As typed (a path, or a bundled example's name).
    source
        The file read.
    target
        The file written: ``source`` in place, ``--output``, or a bundled example's copy.
    found
        What annotating it needs (markers, grouping, each cell's cluster).
    population
        The population of ``--restrict-to``, or None.
    output_name
        The prefix of its CASSIA files, or None.
    """

    name: str
    source: Path
    target: Path
    found: FileMarkers
    population: Population | None
    output_name: str | None


def _annotate(args: argparse.Namespace) -> list[tuple[str, BatchResult]]:
    check_key_added(args.key_added)
    several = len(args.input) > 1
    # Every input is read and checked before a model is paid: a bad second file stops
    # the run before its first call.
    inputs = [_read_input(args, name, several=several) for name in args.input]
    _refuse_collisions(inputs)
    if not args.dry_run:
        for one in inputs:
            _check_writable(one.target, one.output_name)
            if args.no_wait:
                with locked(one.target, wait=False):
                    pass
    # The boost reads the expression data, chunk by chunk from the file: X is never
    # loaded whole.
    cells: list[AnnData | None] = []
    try:
        for one in inputs:
            cells.append(
                read_h5ad(one.source, backed="r") if args.boost_below is not None else None
            )
        data = [
            DataHandle.from_markers(
                backed if one.population is None else backed[one.population.cells],
                key=args.key,
                groupby=one.found.groupby,
                gene_symbols=args.gene_symbols,
            )
            if backed is not None
            else None
            for one, backed in zip(inputs, cells, strict=True)
        ]
        annotated = run_annotations(
            [one.found.adata for one in inputs],
            key=args.key,
            groupby=[one.found.groupby for one in inputs],
            gene_symbols=args.gene_symbols,
            n_runs=args.n_runs,
            models=args.models,
            agreement_threshold=args.agreement_threshold,
            data=data,
            harmonise=args.harmonise or False,
            **_run_options(args),
        )
    finally:
        for backed in cells:
            if backed is not None:
                backed.file.close()
    if annotated[0][0].dry_run:
        return [(one.name, result) for one, (result, _) in zip(inputs, annotated, strict=True)]
    with _writing(cache=not args.no_cache):
        for one, (result, agreement) in zip(inputs, annotated, strict=True):
            _write_input(args, one, result, agreement)  # one file at a time, each whole
    return [(one.name, result) for one, (result, _) in zip(inputs, annotated, strict=True)]


def _read_input(args: argparse.Namespace, name: str, *, several: bool) -> _Input:
    """Read one INPUT's markers and outline, and find what would stop its write."""
    source = Path(name)
    target = args.output
    stem = source.stem
    if not source.exists() and name in BUNDLED_EXAMPLES:
        # Built once in the cache folder and only read: the output is a copy.
        source = BUNDLED_EXAMPLES[name]()
        target = target or Path(f"{name}_annotated.h5ad")
        stem = name
    target = target or source
    started = time.perf_counter()
    found = read_for_annotation(source, key=args.key, groupby=args.groupby)
    logger.info(
        "Read uns[%r], var and obs[%r] of %s in %.2f s.",
        args.key,
        found.groupby,
        source.name,
        time.perf_counter() - started,
    )
    outline = read_outline(source)
    harmonised = [Key.obs.celltype_harmonised(args.key_added)] if args.harmonise else []
    check_key_added(
        args.key_added,
        uns=outline.uns,
        obs=outline.obs_columns,
        groupby=found.groupby,
        columns=harmonised,
    )
    population = None
    if args.restrict_to:  # the subclusters of one population: checked before any call
        population = read_population(
            source,
            args.restrict_to,
            key=args.key,
            groupby=found.groupby,
            key_added=args.key_added,
            parent=args.parent,
        )
        args.parent = population.parent
    output_name = args.output_name
    if output_name and several:
        output_name = input_output_name(output_name, stem)
    return _Input(name, source, target, found, population, output_name)


def _refuse_collisions(inputs: Sequence[_Input]) -> None:
    """Refuse two inputs that would write the same file, before any call."""
    seen: dict[Path, str] = {}
    for one in inputs:
        where = one.target.resolve()
        if where in seen:
            raise ValueError(
                f"{one.name} and {seen[where]} are the same file: give each INPUT once."
            )
        seen[where] = one.name
    prefixes: dict[str, str] = {}
    for one in inputs:
        if one.output_name is None:
            continue
        if one.output_name in prefixes:
            raise ValueError(
                f"{one.name} and {prefixes[one.output_name]} have the same name, so their "
                f"--output-name files ({one.output_name}_summary.csv, ...) would collide: "
                "rename one, or annotate them in two runs."
            )
        prefixes[one.output_name] = one.name


def _write_input(
    args: argparse.Namespace, one: _Input, result: BatchResult, agreement: pd.DataFrame | None
) -> None:
    """Write one input's labels to its file, whole or not at all, then its CASSIA files."""
    found, population = one.found, one.population
    columns = file_label_columns(found.clusters, result, population, key_added=args.key_added)
    if population is None:
        columns |= harmonised_columns(found.clusters, result, key_added=args.key_added)
    else:
        inside = found.clusters[population.cells]
        harmonised = harmonised_columns(inside, result, key_added=args.key_added)
        columns |= restricted_columns(harmonised, population.cells)
    started = time.perf_counter()
    # The lock covers the whole read-modify-write: the file is read (checked, then
    # copied) only once any other run on it has written its own entries.
    with locked(one.target, wait=not args.no_wait):
        remove_stale_temporaries(one.target, older_than=0)  # no one else writes it now
        outline = read_outline(one.source)
        check_key_added(
            args.key_added,
            uns=outline.uns,
            obs=outline.obs_columns,
            groupby=found.groupby,
            columns=columns,
        )
        write_annotation(
            one.source,
            one.target,
            obs_columns=columns,
            uns_key=args.key_added,
            uns_value=uns_record(
                result, groupby=found.groupby, key=args.key, uncertainty=agreement
            ),
        )
    logger.info("Wrote %s in %.2f s.", one.target, time.perf_counter() - started)
    if one.output_name:
        _write_files(result, one.output_name, one.source, columns, key_added=args.key_added)
    if not args.quiet:
        _say(
            f"Wrote {', '.join(f'obs[{name!r}]' for name in columns)} and "
            f"uns[{args.key_added!r}] to {one.target}."
        )


def _check_writable(target: Path | None, output_name: str | None) -> None:
    """Refuse, before any call, a target or an output file that cannot be written."""
    if target is not None:
        check_writable(target)
    if output_name:
        for path in output_paths(output_name).values():
            check_writable(path, make_folders=True)


@contextmanager
def _writing(*, cache: bool) -> Iterator[None]:
    """Turn a failed write after the calls (a full disk) into one line that says what is kept."""
    try:
        yield
    except CassiaError:
        raise
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        kept = (
            " The model's replies are in the cache: the same command again calls no model."
            if cache
            else ""
        )
        raise CassiaError(f"Could not write{where}: {err.strerror or err}.{kept}") from None


def _write_files(
    result: BatchResult, output_name: str, source: Path, columns: dict, *, key_added: str
) -> None:
    """Write CASSIA's files; the report shows the cells on the UMAP when the file has one."""
    coordinates = read_embedding(source, basis=Default.basis)
    cells = None
    if coordinates is not None:
        names = pd.Index(np.arange(len(coordinates)).astype(str))
        cells = AnnData(
            obs=pd.DataFrame(columns, index=names),
            obsm={Key.obsm.basis(Default.basis): coordinates},
        )
    write_outputs(result, output_name, adata=cells, key=key_added)


def _batch(args: argparse.Namespace) -> BatchResult:
    if not args.output_name:  # given, but empty: a bad value, as argparse's errors (status 2)
        raise ValueError("batch needs --output-name PREFIX for its output files, not ''.")
    if not args.dry_run:
        _check_writable(None, args.output_name)
    if not Path(args.markers).is_file():  # before the writes: a missing file is no write error
        raise FileNotFoundError(f"Marker file not found: {args.markers!r}.")
    with _writing(cache=not args.no_cache):
        return run_batch_to_files(
            args.markers,
            args.output_name,
            celltype_column=args.celltype_column,
            gene_column_name=args.gene_column_name,
            **_run_options(args),
        )


def _report_all(results: Sequence[tuple[str, BatchResult]]) -> None:
    """Print each input's clusters and counts; with several, a heading each and a total."""
    if len(results) == 1:
        _report(results[0][1])
        _report_harmonised(results[0][1])
        return
    for name, result in results:
        _say(f"{name}:")
        _report(result, cost=False)
    batches = [result for _, result in results]
    first = batches[0]
    if first.dry_run:
        _say(f"{len(batches)} files: nothing was called or written.")
        return
    usage = {
        name: sum(batch.usage[name] for batch in batches)
        for name in ("requests", "cached_calls", "prompt_tokens", "completion_tokens")
    }
    # The harmonisation's call is the run's, not a cluster's: counted once.
    usage["requests"] += int(first.settings.get("harmonise_requests", 0))
    cost = f", {dollars_text(first.settings['cost'])}" if "cost" in first.settings else ""
    annotated = sum(c.status == "ok" for batch in batches for c in batch.clusters)
    clusters = sum(len(batch) for batch in batches)
    _say(
        f"{len(batches)} files, one run: {annotated} of {clusters} clusters annotated; "
        f"{usage['requests']} requests, {usage['cached_calls']} replies from the cache, "
        f"{usage['prompt_tokens'] + usage['completion_tokens']:,} tokens{cost}."
    )
    _report_harmonised(first)


def _report_harmonised(result: BatchResult) -> None:
    """Say what the harmonisation did, when it was asked for."""
    note = result.settings.get("harmonise_note")
    if note:
        _say(f"Harmonised names ({result.settings.get('harmonise_method')}): {_one_line(note)}.")


def _report(result: BatchResult, *, cost: bool = True) -> None:
    if result.dry_run:
        tokens = [c.estimated_prompt_tokens or 0 for c in result.clusters]
        _say(
            f"Dry run: {len(tokens)} clusters, about {sum(tokens):,} prompt tokens "
            f"({sum(tokens) // max(len(tokens), 1):,} per cluster). Nothing was called or "
            "written."
        )
        for line in result.estimate.lines() if result.estimate else ():
            _say(line)
        return
    result = bounded(result)
    names = [printable(c.cluster) for c in result.clusters]
    width = max(map(len, names))
    for name, c in zip(names, result.clusters, strict=True):
        label = c.main_cell_type if c.status == "ok" else f"[{c.status}] {c.error}"
        _say(f"  {name:<{width}}  {_one_line(label)}")
    usage = result.usage
    spent = ""
    if cost and "cost" in result.settings:
        spent = f", {dollars_text(result.settings['cost'])}"
    annotated = sum(c.status == "ok" for c in result.clusters)
    _say(
        f"{annotated} of {len(result)} clusters annotated; "
        f"{usage['requests']} requests, {usage['cached_calls']} replies from the cache, "
        f"{usage['prompt_tokens'] + usage['completion_tokens']:,} tokens{spent}."
    )
