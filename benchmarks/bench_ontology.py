"""Cell Ontology mapping and evaluation: speed, coverage and agreement with CASSIA's judge.

Offline (no model). Speed: the ontology's load and the time to map a label. Coverage: the
share of labels that get a CL term, for main types (marker100's true types, the dev set's
truths and answers) and for first subtypes (the dev set's answers). Agreement, on the dev
set of real answers judged 0-100 by the CASSIA paper's judge: the share of answers the judge
scores 90 or more that score at least 0.5 here, and of those it scores 30 or less that score
0 here; per model, the means and the confusion of grades.

Run: ``python benchmarks/bench_ontology.py [--dev judged.csv] [--list]``, or ``--quick``
(speed and coverage only, on fewer labels). The dev set is
``/work/shared/data/judged_predictions_dev.csv`` (columns model, truth, predicted,
judge_score, tissue, species); without it, only the figures on marker100 are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER100 = HERE.parent / "tests" / "data" / "marker100.csv"
DEV = Path("/work/shared/data/judged_predictions_dev.csv")


def judge_grade(score: float) -> str:
    """The judge's 0-100 in three bands, as the targets read it."""
    return "90-100" if score >= 90 else "31-89" if score > 30 else "0-30"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=Path, default=DEV, help="the judged answers (CSV)")
    parser.add_argument("--marker100", type=Path, default=MARKER100)
    parser.add_argument("--list", action="store_true", help="print every disagreement")
    parser.add_argument("--quick", action="store_true", help="speed and coverage, 40 labels")
    args = parser.parse_args()

    start = time.perf_counter()
    from cassia_sc.ontology import CellOntology  # timed: the import

    imported = time.perf_counter()
    ontology = CellOntology()
    ontology.label("CL:0000000")  # loads CL
    loaded = time.perf_counter()

    import pandas as pd

    from cassia_sc.evaluation import score_labels, summarize

    markers = pd.read_csv(args.marker100, encoding="utf-8-sig")
    mains = list(zip(markers["True Cell Type"], markers["Tissue"], strict=True))
    dev = None
    if args.dev.exists():
        dev = pd.read_csv(args.dev, encoding="utf-8-sig")
        dev["predicted"] = dev["predicted"].fillna("").astype(str)
        answers = [(p, t) for p, t in zip(dev["predicted"], dev["tissue"], strict=True) if p]
        mains += list(zip(dev["truth"], dev["tissue"], strict=True)) + answers
    labels = list(dict.fromkeys(mains))
    if args.quick:
        labels = labels[:40]

    fresh = CellOntology()  # shares the loaded CL, with a cache of its own
    times = []
    for label, tissue in labels:
        begin = time.perf_counter()
        fresh.match(label, tissue=tissue)
        times.append(time.perf_counter() - begin)
    times.sort()
    begin = time.perf_counter()
    for label, tissue in labels:
        fresh.match(label, tissue=tissue)
    cached = (time.perf_counter() - begin) / len(labels)
    print(
        f"load: {loaded - imported:.3f} s (target < 0.5 s; importing cassia_sc, scanpy included: "
        f"{imported - start:.3f} s)"
    )
    print(
        f"map a label, first time ({len(labels)} distinct labels): mean "
        f"{1000 * statistics.mean(times):.3f} ms (target < 1 ms), median "
        f"{1000 * statistics.median(times):.3f} ms, 95th percentile "
        f"{1000 * times[int(0.95 * (len(times) - 1))]:.3f} ms, slowest "
        f"{1000 * times[-1]:.2f} ms; again (cached) {1e6 * cached:.1f} us"
    )
    if args.quick:
        return

    def coverage(pairs: list[tuple[str, str]]) -> str:
        mapped = sum(ontology.match(label, tissue=tissue).mapped for label, tissue in pairs)
        return f"{mapped} / {len(pairs)} = {100 * mapped / len(pairs):.1f} %"

    print(f"main types with a term: {coverage(mains)} (target >= 97 %)")
    unmapped = sorted({lab for lab, t in mains if not ontology.match(lab, tissue=t).mapped})
    print(f"  without: {'; '.join(unmapped)}")
    if dev is None:
        print(f"(no dev set at {args.dev}: agreement not measured)")
        return
    print(f"first subtypes with a term: {coverage(answers)} (target >= 90 %)")

    table = score_labels(dev["predicted"].tolist(), dev["truth"].tolist(), tissue=dev["tissue"])
    table["model"] = dev["model"].to_numpy()
    table["judge"] = dev["judge_score"].to_numpy(dtype=float)
    high = table[table["judge"] >= 90]
    low = table[table["judge"] <= 30]
    print(
        f"judge >= 90 scoring >= 0.5 here: {(high['score'] >= 0.5).sum()} / {len(high)} = "
        f"{100 * (high['score'] >= 0.5).mean():.1f} % (target >= 90 %)"
    )
    print(
        f"judge <= 30 scoring 0 here: {(low['score'] == 0).sum()} / {len(low)} = "
        f"{100 * (low['score'] == 0).mean():.1f} % (target >= 90 %)"
    )
    print()
    print("model      n    judge mean  ours (0-100)  ours (1/0.5/0)  full  partial  wrong")
    for model, rows in [*table.groupby("model", sort=False), ("all", table)]:
        summary = summarize(rows)
        print(
            f"{model:<9} {len(rows):>3}  {rows['judge'].mean():>10.1f}  "
            f"{summary['mean_100']:>12.1f}  {summary['mean']:>14.3f}  {summary['full']:>4}  "
            f"{summary['partial']:>7}  {summary['wrong']:>5}"
        )
    print()
    print("judge \\ ours   full  partial  wrong")
    table["band"] = table["judge"].map(judge_grade)
    for band in ("90-100", "31-89", "0-30"):
        rows = table[table["band"] == band]
        counts = [int((rows["grade"] == grade).sum()) for grade in ("full", "partial", "wrong")]
        print(f"{band:<12} {counts[0]:>5}  {counts[1]:>7}  {counts[2]:>5}")
    # Disagreements: the two put an answer on different sides of "at least partly right".
    apart = table[
        ((table["judge"] >= 50) & (table["score"] == 0))
        | ((table["judge"] < 50) & (table["score"] > 0))
    ]
    print(f"\ndisagreements (judge >= 50 and ours 0, or judge < 50 and ours > 0): {len(apart)}")
    if args.list:
        for row in apart.itertuples():
            print(
                f"  {row.model}: {row.truth!r} / {row.predicted!r}: judge {row.judge:.0f}, ours "
                f"{row.score_100:.0f} ({row.relation}; {row.truth_term_label or 'no term'} / "
                f"{row.predicted_term_label or 'no term'})"
            )


if __name__ == "__main__":
    main()
