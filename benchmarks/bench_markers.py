"""Time ``cassia_sc.top_markers`` on a rank_genes_groups result of 500 clusters x 30,000 genes.

Run: ``python benchmarks/bench_markers.py [--clusters 500] [--genes 30000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd

import cassia_sc


def synthetic_rank_genes_groups(
    n_clusters: int, n_genes: int, *, all_pass: bool = False, seed: int = 0
) -> ad.AnnData:
    """An AnnData whose uns['rank_genes_groups'] looks like a Wilcoxon run with pts=True.

    By default about 7 % of the rows pass the filters, as in a real test over all genes;
    ``all_pass`` makes every row pass the p-value and fold-change filters, and 90 % all
    three (the worst case: most rows pass).
    """
    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:05d}" for i in range(n_genes)], dtype=object)
    groups = [str(i) for i in range(n_clusters)]
    adata = ad.AnnData(
        obs=pd.DataFrame(
            {"cluster": pd.Categorical(rng.choice(groups, 1000))},
            index=[f"c{i}" for i in range(1000)],
        ),
        var=pd.DataFrame(index=genes),
    )
    order = [rng.permutation(n_genes) for _ in groups]
    scores = np.sort(rng.normal(0, 3, (n_genes, n_clusters)).astype(np.float32), axis=0)[::-1]
    lfc = (scores / 2 + rng.normal(0, 0.5, scores.shape)).astype(np.float32)
    pvals = np.exp(-np.abs(scores.astype(float)) * 3)
    if all_pass:
        lfc, pvals = np.abs(lfc) + 0.5, pvals / 1e9

    def records(values: np.ndarray) -> np.recarray:
        return np.rec.fromarrays(list(values.T), names=groups)

    adata.uns["rank_genes_groups"] = {
        "params": {
            "groupby": "cluster",
            "method": "wilcoxon",
            "reference": "rest",
            "use_raw": False,
        },
        "names": np.rec.fromarrays([genes[o] for o in order], names=groups),
        "scores": records(scores),
        "logfoldchanges": records(lfc),
        "pvals": records(pvals),
        "pvals_adj": records(np.minimum(pvals * n_genes, 1.0)),
        "pts": pd.DataFrame(rng.random((n_genes, n_clusters)), index=genes, columns=groups),
        "pts_rest": pd.DataFrame(
            rng.random((n_genes, n_clusters)) / 2, index=genes, columns=groups
        ),
    }
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--genes", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--all-pass", action="store_true", help="most rows (90 %%) pass the filters"
    )
    args = parser.parse_args()

    adata = synthetic_rank_genes_groups(args.clusters, args.genes, all_pass=args.all_pass)
    result = adata.uns["rank_genes_groups"]
    # All three filters, the fraction one looked up by gene as top_markers does.
    pts = result["pts"]
    passing = np.mean(
        [
            (result["pvals_adj"][g] < 0.05)
            & (result["logfoldchanges"][g] > 0.25)
            & (pts[g].reindex(result["names"][g]).to_numpy() > 0.1)
            for g in result["names"].dtype.names
        ]
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        markers = cassia_sc.top_markers(adata, n_genes=50)
        times.append(time.perf_counter() - start)
    assert len(markers) == args.clusters and all(len(g) == 50 for g in markers.values())
    median = sorted(times)[len(times) // 2]
    print(
        f"top_markers {args.clusters} clusters x {args.genes} genes (with pts, "
        f"{passing:.0%} of rows passing): best {min(times):.2f} s, median {median:.2f} s "
        f"over {args.repeats} runs"
    )


if __name__ == "__main__":
    main()
