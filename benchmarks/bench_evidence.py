"""The annotation boost's expression evidence on 1,000,000 cells x 20,000 genes.

Builds a synthetic CSR float32 matrix (2 % non-zero, log1p-like values) with 50 clusters
(a few seconds with numpy), then measures:

(a) ``ExpressionEvidence.from_adata`` on it in memory: wall time, and the memory it takes
    on top of the matrix, both as the peak resident set size (RSS, sampled every 5 ms by a
    thread with psutil) and as the peak of the allocations :mod:`tracemalloc` sees (a
    second run);
(b) the same from a backed ``.h5ad`` (written once to the work folder, then kept), in a
    fresh process reading it with ``read_h5ad(path, backed="r")``: wall time and the
    process's peak RSS (``VmHWM``), with the file in the page cache (warm) and after
    its pages were dropped with ``posix_fadvise`` (cold); and, warm, as a Dask array
    (``anndata.experimental.read_elem_lazy``, blocks of 1,000 cells);
(c) one ``lookup`` of 50 measured genes: the whole DataFrame, and the table look-up alone
    (``_columns``, the arrays the DataFrame is made of); median of 300 calls;
(d) ``scanpy.get.aggregate(..., func=["sum", "count_nonzero"])`` on the same in-memory
    AnnData, for comparison (its figures are checked against ours).

Run: ``python benchmarks/bench_evidence.py [--cells 1000000] [--genes 20000] [--workdir DIR]``
or ``--quick`` (20,000 cells x 2,000 genes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp

from cassia_sc.evidence import ExpressionEvidence

N_CLUSTERS = 50
DENSITY = 0.02


def synthetic(n_cells: int, n_genes: int, *, seed: int = 0) -> ad.AnnData:
    """A CSR matrix with DENSITY non-zeros per row, sorted and distinct, and 50 clusters.

    The genes fall into n_genes * DENSITY bins and each cell has one non-zero gene per bin,
    so that the indices come out sorted and distinct without a sort.
    """
    rng = np.random.default_rng(seed)
    per_row = max(1, int(n_genes * DENSITY))
    width = n_genes // per_row
    indices = rng.integers(0, width, (n_cells, per_row), dtype=np.int32)
    indices += np.arange(per_row, dtype=np.int32) * width
    data = rng.random(n_cells * per_row, dtype=np.float32)
    data *= 3
    data += np.float32(0.01)
    indptr = np.arange(0, (n_cells + 1) * per_row, per_row, dtype=np.int64)
    X = sp.csr_matrix((data, indices.ravel(), indptr), shape=(n_cells, n_genes))
    groups = [str(i) for i in range(N_CLUSTERS)]
    obs = pd.DataFrame(
        {"leiden": pd.Categorical.from_codes(rng.integers(0, N_CLUSTERS, n_cells), groups)},
        index=pd.RangeIndex(n_cells).astype(str),
    )
    var = pd.DataFrame(index=[f"GENE{i:05d}" for i in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def matrix_bytes(X: sp.csr_matrix) -> int:
    return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes


class PeakRSS:
    """The highest RSS of this process while the block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self._process = psutil.Process()
        self.before = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.before


def in_memory(adata: ad.AnnData) -> tuple[ExpressionEvidence, list[str]]:
    size = matrix_bytes(adata.X)
    with PeakRSS() as rss:
        start = time.perf_counter()
        evidence = ExpressionEvidence.from_adata(adata, groupby="leiden")
        wall = time.perf_counter() - start
    tracemalloc.start()
    ExpressionEvidence.from_adata(adata, groupby="leiden")
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return evidence, [
        f"(a) in memory: from_adata {wall:.2f} s (target < 10 s)",
        f"    matrix {size / 1e9:.2f} GB; on top of it, peak RSS +{rss.extra / 1e6:,.0f} MB"
        f" ({(size + rss.extra) / size:.2f} x the matrix), peak traced allocations"
        f" +{traced / 1e6:,.0f} MB ({(size + traced) / size:.2f} x) (target < 1.5 x)",
    ]


def backed(adata: ad.AnnData, workdir: Path) -> list[str]:
    path = workdir / f"evidence_{adata.n_obs}x{adata.n_vars}.h5ad"
    if not path.exists():
        start = time.perf_counter()
        adata.write_h5ad(path)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    lines = [f"(b) backed .h5ad ({path.stat().st_size / 1e9:.2f} GB), in a fresh process:"]
    for cache in ("warm", "cold", "dask"):
        if cache == "cold":
            descriptor = os.open(path, os.O_RDONLY)
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(descriptor)
        else:  # read it once so that it is in the page cache
            with open(path, "rb") as file:
                while file.read(1 << 26):
                    pass
        mode = "--child-dask" if cache == "dask" else "--child-backed"
        done = subprocess.run(
            [sys.executable, __file__, mode, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(done.stdout.strip().splitlines()[-1])
        how = (
            "    as a Dask array (read_elem_lazy: blocks of 1,000 cells), warm"
            if cache == "dask"
            else f"    {cache} page cache"
        )
        lines.append(
            f"{how}: from_adata {child['wall']:.2f} s"
            + (" (target < 60 s)" if cache != "dask" else "")
            + f", peak RSS {child['peak'] / 1e6:,.0f} MB"
            + (" (target < 2 GB; " if cache != "dask" else " (")
            + f"{child['imported'] / 1e6:,.0f} MB after the imports and the read)"
        )
    return lines


def child_backed(path: str, *, dask: bool = False) -> None:
    if dask:  # X as a Dask array of CSR blocks of 1,000 cells, as read_elem_lazy gives it
        import h5py
        from anndata.experimental import read_elem_lazy

        file = h5py.File(path, "r")
        adata = ad.AnnData(X=read_elem_lazy(file["X"]), obs=ad.io.read_elem(file["obs"]))
    else:
        adata = ad.read_h5ad(path, backed="r")
    imported = psutil.Process().memory_info().rss
    start = time.perf_counter()
    ExpressionEvidence.from_adata(adata, groupby="leiden")
    wall = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across the exec.
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    print(json.dumps({"wall": wall, "peak": peak, "imported": imported}))


def lookups(evidence: ExpressionEvidence) -> list[str]:
    rng = np.random.default_rng(1)
    genes = list(evidence.genes[rng.choice(evidence.genes.size, 50, replace=False)])
    cluster = evidence.clusters[0]

    def median(call, repeats: int = 300) -> float:
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    full = median(lambda: evidence.lookup(cluster, genes))
    table = median(lambda: evidence._columns(cluster, genes, n_similar=3))
    text = median(lambda: evidence.describe(cluster, genes))
    start = time.perf_counter()
    evidence.lookup(cluster, [*genes[:49], "NOTAGENE1"])  # its suggestions: not cached yet
    unknown = time.perf_counter() - start
    return [
        f"(c) lookup of 50 measured genes: {full * 1e3:.2f} ms with the DataFrame"
        f" (target < 1 ms); the table look-up alone {table * 1e3:.3f} ms;"
        f" describe {text * 1e3:.2f} ms",
        f"    with one gene not measured (its suggestions, first time): {unknown * 1e3:.1f} ms",
    ]


def aggregate(adata: ad.AnnData, evidence: ExpressionEvidence) -> list[str]:
    import scanpy as sc

    size = matrix_bytes(adata.X)
    with PeakRSS() as rss:
        start = time.perf_counter()
        result = sc.get.aggregate(adata, by="leiden", func=["sum", "count_nonzero"])
        wall = time.perf_counter() - start
    n_cells = evidence.n_cells[:, None]
    same = np.allclose(
        np.asarray(result.layers["sum"]) / n_cells, evidence.mean, rtol=1e-5, atol=1e-9
    ) and np.array_equal(np.asarray(result.layers["count_nonzero"]) / n_cells, evidence.fraction)
    return [
        f"(d) scanpy.get.aggregate(sum, count_nonzero) in memory: {wall:.2f} s,"
        f" peak RSS +{rss.extra / 1e6:,.0f} MB ({(size + rss.extra) / size:.2f} x the matrix);"
        f" same figures as ours: {'yes' if same else 'NO'}"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="20,000 cells x 2,000 genes")
    parser.add_argument("--child-backed", help=argparse.SUPPRESS)
    parser.add_argument("--child-dask", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_backed or args.child_dask:
        child_backed(args.child_backed or args.child_dask, dask=bool(args.child_dask))
        return
    if args.quick:
        args.cells, args.genes = 20_000, 2_000
    workdir = args.workdir or Path("/tmp/cassia-bench-evidence" + ("-quick" if args.quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    adata = synthetic(args.cells, args.genes)
    print(f"built the matrix in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    lines = [
        f"{args.cells:,} cells x {args.genes:,} genes, CSR float32, {adata.X.nnz:,} non-zeros"
        f" ({adata.X.nnz / args.cells / args.genes:.1%}), {N_CLUSTERS} clusters;"
        f" {os.cpu_count()} cores"
    ]
    evidence, measured = in_memory(adata)
    lines += measured
    lines += backed(adata, workdir)
    lines += lookups(evidence)
    lines += aggregate(adata, evidence)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
