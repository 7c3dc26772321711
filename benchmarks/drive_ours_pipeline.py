"""Run cassia_sc's ``runCASSIA_pipeline`` for the pipeline benchmark (one process per run).

Usage: ``python drive_ours_pipeline.py MARKERS.csv OUTPUT_DIR BASE_URL WORKERS CACHE_DIR TISSUE
SPECIES THRESHOLD``
"""

import sys

import cassia_sc

if __name__ == "__main__":
    markers, output_dir, base_url, workers, cache_dir, tissue, species, threshold = sys.argv[1:9]
    cassia_sc.runCASSIA_pipeline(
        "pipeline",
        tissue,
        species,
        markers,
        max_workers=int(workers),
        overall_provider=base_url,
        annotation_model="test-model",
        score_threshold=float(threshold),
        merge_annotations=False,
        output_dir=output_dir,
        validate_api_keys_before_start=False,  # CASSIA's options, accepted and ignored
        auto_convert_ids=False,
        cache_dir=cache_dir,
        progress=False,
    )
