"""Run CASSIA 1.4.0's ``runCASSIA_pipeline`` for the pipeline benchmark, in its own venv.

Usage: ``python drive_cassia_pipeline.py MARKERS.csv OUTPUT_DIR BASE_URL WORKERS TISSUE SPECIES
THRESHOLD``. CASSIA writes its first batch files into the working folder, so the driver
works inside OUTPUT_DIR; the pipeline's own files go to a dated folder below it.
"""

import os
import sys

import CASSIA
import pandas as pd

if __name__ == "__main__":
    markers, output_dir, base_url, workers, tissue, species, threshold = sys.argv[1:8]
    os.chdir(output_dir)
    CASSIA.runCASSIA_pipeline(
        output_file_name="pipeline",
        tissue=tissue,
        species=species,
        marker=pd.read_csv(markers),
        max_workers=int(workers),
        overall_provider=base_url,
        annotation_model="test-model",
        score_model="test-model",
        annotationboost_model="test-model",
        score_threshold=float(threshold),
        merge_annotations=False,  # one more model call per label level; not compared here
        output_dir=output_dir,
        validate_api_keys_before_start=False,  # no key check: the server is local
        auto_convert_ids=False,  # no gene-ID lookups over the network
    )
