"""Run one of CASSIA 1.4.0's own functions, in CASSIA's venv (``tests/cassia_env.py``).

The interop tests call it as a CASSIA user would call CASSIA, every model call going to the
local scripted server given as ``--base-url`` (CASSIA's ``provider`` for a custom
OpenAI-compatible endpoint; its key is read from ``CUSTOMIZED_API_KEY``)::

    python cassia_driver.py batch MARKERS.csv PREFIX --base-url URL --model M
    python cassia_driver.py score INPUT.csv OUTPUT.csv --base-url URL --model M
    python cassia_driver.py boost RESULTS_summary.csv MARKERS.csv CLUSTER PREFIX --base-url URL
    python cassia_driver.py score-report SCORED.csv INDEX_NAME
    python cassia_driver.py batch-report SCORED.csv CONVERSATIONS.json REPORT.html
    python cassia_driver.py steps STEPS.json OUTCOMES.json

``steps`` runs several of the commands above in this one process, in order, since
importing CASSIA takes 4 s: ``STEPS.json`` maps a name to each command's arguments, and
``OUTCOMES.json`` gets, for each name, its exit status, its traceback if it raised, and
what it printed.

``batch-report`` feeds CASSIA's batch report the rows of a table with each cluster's entry
of a conversations JSON, as CASSIA's ``runCASSIA_pipeline`` does. CASSIA is imported in
:func:`run` and :func:`steps` only: pytest imports this file (for doctests) in our venv,
which has no CASSIA.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import traceback
from typing import Any

import pandas as pd


def _cluster_as_read(results: str, name: str) -> Any:
    """The cluster's ID as pandas reads it from the results CSV (``3``, not ``"3"``).

    CASSIA compares the ``cluster_name`` it is given with the values pandas reads, so a
    CASSIA user with numbered clusters passes the number.
    """
    for value in pd.read_csv(results)["Cluster ID"].tolist():
        if str(value) == name:
            return value
    raise SystemExit(f"no cluster {name!r} in {results}")


def command_line() -> argparse.ArgumentParser:
    """The command line of one command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser("batch")
    batch.add_argument("markers")
    batch.add_argument("prefix")
    score = commands.add_parser("score")
    score.add_argument("input")
    score.add_argument("output")
    boost = commands.add_parser("boost")
    boost.add_argument("results")
    boost.add_argument("markers")
    boost.add_argument("cluster")
    boost.add_argument("prefix")
    boost.add_argument("--iterations", type=int, default=3)
    for command in (batch, score, boost):
        command.add_argument("--base-url", required=True)
        command.add_argument("--model", default="test-model")
    score_report = commands.add_parser("score-report")
    score_report.add_argument("csv")
    score_report.add_argument("index")
    batch_report = commands.add_parser("batch-report")
    batch_report.add_argument("csv")
    batch_report.add_argument("conversations")
    batch_report.add_argument("output")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run one parsed command; return its exit status."""
    import CASSIA  # only in CASSIA's venv

    if args.command == "batch":
        CASSIA.runCASSIA_batch(
            marker=pd.read_csv(args.markers),
            output_name=args.prefix,
            model=args.model,
            provider=args.base_url,
            tissue="blood",
            species="human",
            max_workers=2,
            validate_api_key_before_start=False,  # the server is local
            auto_convert_ids=False,  # no gene-ID look-ups over the network
            verbose=False,
        )
    elif args.command == "score":
        CASSIA.runCASSIA_score_batch(
            input_file=args.input,
            output_file=args.output,
            max_workers=2,
            model=args.model,
            provider=args.base_url,
        )
    elif args.command == "boost":
        outcome = CASSIA.runCASSIA_annotationboost(
            full_result_path=args.results,
            marker=pd.read_csv(args.markers),
            cluster_name=_cluster_as_read(args.results, args.cluster),
            major_cluster_info="Human PBMC",
            output_name=args.prefix,
            num_iterations=args.iterations,
            model=args.model,
            provider=args.base_url,
            auto_convert_ids=False,
        )
        print(json.dumps({k: v for k, v in outcome.items() if k != "execution_time"}))
        return 0 if outcome.get("status") == "success" else 1  # CASSIA reports, never raises
    elif args.command == "score-report":
        CASSIA.runCASSIA_generate_score_report(csv_path=args.csv, index_name=args.index)
    else:
        with open(args.conversations, encoding="utf-8") as handle:
            conversations = json.load(handle)
        rows = pd.read_csv(args.csv).to_dict("records")
        for row in rows:
            row["Conversation History"] = conversations.get(str(row["Cluster ID"]), {})
        CASSIA.generate_batch_html_report_from_data(rows=rows, output_path=args.output)
    return 0


def steps(plan: str, outcomes: str) -> int:
    """Run each named command of ``plan`` in turn; write each one's outcome to ``outcomes``.

    A command that fails does not stop the next: each test checks its own step.
    """
    with open(plan, encoding="utf-8") as handle:
        commands: dict[str, list[str]] = json.load(handle)
    import CASSIA  # noqa: F401 - once, before the first step: the 4 s it takes are no step's

    done: dict[str, dict[str, Any]] = {}
    for name, argv in commands.items():
        printed = io.StringIO()
        status, error = 1, ""
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                status = run(command_line().parse_args(argv))
            except SystemExit as stop:  # argparse, or a cluster not in the results
                status = stop.code if isinstance(stop.code, int) else 1
                error = f"SystemExit: {stop}"
            except Exception:
                error = traceback.format_exc()
        done[name] = {"status": status, "error": error, "output": printed.getvalue()}
    with open(outcomes, "w", encoding="utf-8") as handle:
        json.dump(done, handle)
    return 0


def main(argv: list[str]) -> int:
    """Run the command in ``argv``; return the exit status."""
    if argv[:1] == ["steps"]:
        return steps(*argv[1:])
    return run(command_line().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
