"""Run cassia_sc's ``runCASSIA_batch`` for the side-by-side benchmark (one process per run).

Usage: ``python drive_ours.py MARKERS.csv OUTPUT_PREFIX BASE_URL WORKERS CACHE_DIR TISSUE SPECIES``
"""

import sys

import cassia_sc

if __name__ == "__main__":
    markers, output, base_url, workers, cache_dir, tissue, species = sys.argv[1:8]
    cassia_sc.runCASSIA_batch(
        markers,
        output,
        model="test-model",
        tissue=tissue,
        species=species,
        provider=base_url,
        max_workers=int(workers),
        cache_dir=cache_dir,
        progress=False,
    )
