"""Run CASSIA 1.4.0's ``runCASSIA_batch`` for the side-by-side benchmark, in its own venv.

Usage: ``python drive_cassia.py MARKERS.csv OUTPUT_PREFIX BASE_URL WORKERS TISSUE SPECIES``
"""

import sys

import CASSIA
import pandas as pd

if __name__ == "__main__":
    markers, output, base_url, workers, tissue, species = sys.argv[1:7]
    CASSIA.runCASSIA_batch(
        marker=pd.read_csv(markers),
        output_name=output,
        model="test-model",
        provider=base_url,
        max_workers=int(workers),
        tissue=tissue,
        species=species,
        validate_api_key_before_start=False,  # no key check: the server is local
        auto_convert_ids=False,  # no gene-ID lookups over the network
        verbose=False,
    )
