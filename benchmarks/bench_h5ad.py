"""In-place ``cassia-sc annotate`` of a large ``.h5ad`` beside a full read + write of it.

Builds (once, cached in the work folder) a file of N cells x G genes with a sparse X
(about 5 % non-zero), an ``obs`` with 30 clusters and a synthetic ``rank_genes_groups``
with ``pts``; then, each in its own process with its peak memory measured by
``/usr/bin/time``:

1. ``cassia-sc annotate FILE --verbose`` against a loopback server (the file's read and
   write times are the ones the command logs with ``--verbose``);
2. ``anndata.read_h5ad`` + ``write_h5ad`` of the same file.

Run: ``python benchmarks/bench_h5ad.py [--cells 1000000] [--genes 2000] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_markers import synthetic_rank_genes_groups
from llm_server import LLMServer
from scripted_model import ScriptedModel

N_CLUSTERS = 30


def build_file(path: Path, n_cells: int, n_genes: int, *, density: float = 0.05) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    per_row = int(n_genes * density)
    indptr = np.arange(0, (n_cells + 1) * per_row, per_row, dtype=np.int64)
    indices = np.sort(rng.integers(0, n_genes, (n_cells, per_row), dtype=np.int32), axis=1).ravel()
    data = rng.random(n_cells * per_row, dtype=np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    # The markers: the same synthetic Wilcoxon result as the marker benchmark's.
    markers = synthetic_rank_genes_groups(N_CLUSTERS, n_genes)
    result = markers.uns["rank_genes_groups"]
    result["params"]["groupby"] = "leiden"
    groups = list(result["names"].dtype.names)
    obs = pd.DataFrame(
        {
            "leiden": pd.Categorical(rng.choice(groups, n_cells), categories=groups),
            "n_counts": rng.random(n_cells, dtype=np.float32) * 1e4,
            "sample": pd.Categorical(rng.choice(["a", "b", "c", "d"], n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=X, obs=obs, var=markers.var)
    adata.obsm["X_umap"] = rng.normal(size=(n_cells, 2)).astype(np.float32)
    adata.uns["rank_genes_groups"] = result
    adata.write_h5ad(path)


def timed(command: list[str]) -> tuple[float, float, str]:
    """Run a command under /usr/bin/time; return wall seconds, peak MB and its stderr."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return wall, peak_kb / 1024, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cassia-bench-h5ad"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    pristine = args.workdir / f"cells{args.cells}_genes{args.genes}_v2.h5ad"
    if not pristine.exists():
        print(f"building {pristine} ...", flush=True)
        build_file(pristine, args.cells, args.genes)
    work = args.workdir / "work.h5ad"
    shutil.copyfile(pristine, work)
    size_gb = work.stat().st_size / 1e9

    with LLMServer(ScriptedModel(delay=0.05)) as server:
        wall, peak, log = timed(
            [
                sys.executable, "-m", "cassia_sc", "annotate", str(work), "--tissue", "blood", "--species", "human",
                "--model", "test-model", "--provider", server.base_url, "--no-cache",
                "--max-workers", "16", "--verbose", "--quiet",
            ]
        )  # fmt: skip
    read = float(
        re.search(r"Read uns\[.*\], var and obs\[.*\] (?:of .* )?in ([\d.]+) s", log).group(1)
    )
    write = float(re.search(r"Wrote .* in ([\d.]+) s", log).group(1))

    full_wall, full_peak, _ = timed(
        [
            sys.executable, "-c",
            "import sys, anndata as ad; a = ad.read_h5ad(sys.argv[1]); "
            "a.write_h5ad(sys.argv[1] + '.copy.h5ad')",
            str(work),
        ]
    )  # fmt: skip
    Path(str(work) + ".copy.h5ad").unlink(missing_ok=True)

    print(f"file: {args.cells:,} cells x {args.genes:,} genes, {size_gb:.2f} GB")
    print(f"cassia-sc annotate in place: read {read:.2f} s + write {write:.2f} s")
    print(f"  whole command (with the model calls): {wall:.2f} s, peak memory {peak:,.0f} MB")
    print(f"anndata read_h5ad + write_h5ad: {full_wall:.2f} s, peak memory {full_peak:,.0f} MB")


if __name__ == "__main__":
    main()
