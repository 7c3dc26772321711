"""Run one of CASSIA 1.4.0's own functions, in CASSIA's venv (``tests/cassia_env.py``).

The interop tests call it as a CASSIA user would call CASSIA, every model call going to the
local scripted server given as ``--base-url`` (CASSIA's ``provider`` for a custom
OpenAI-compatible endpoint; its key is read from ``CUSTOMIZED_API_KEY``)::

    python cassia_driver.py batch MARKERS.csv PREFIX --base-url URL --model M
    python cassia_driver.py score INPUT.csv OUTPUT.csv --base-url URL --model M
    python cassia_driver.py boost RESULTS_summary.csv MARKERS.csv CLUSTER PREFIX --base-url URL
    python cassia_driver.py score-report SCORED.csv INDEX_NAME
    python cassia_driver.py batch-report SCORED.csv CONVERSATIONS.json REPORT.html

``batch-report`` feeds CASSIA's batch report the rows of a table with each cluster's entry
of a conversations JSON, as CASSIA's ``runCASSIA_pipeline`` does. CASSIA is imported in
:func:`main` only: pytest imports this file (for doctests) in our venv, which has no CASSIA.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str]) -> int:
    """Run the command in ``argv``; return the exit status."""
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
