"""Run ``runCASSIA_batch`` on the bundled example in its own process, for kill and Ctrl-C tests.

Usage: ``python batch_process.py BASE_URL CACHE_DIR OUTPUT_PREFIX MAX_WORKERS [BATCH_API]``
(with BATCH_API, the calls go through that batch API, polled every 0.02 s).
"""

import sys

import cassia_sc

if __name__ == "__main__":
    base_url, cache_dir, output, workers = sys.argv[1:5]
    batching = {"batch_api": sys.argv[5], "batch_poll_interval": 0.02} if sys.argv[5:] else {}
    cassia_sc.runCASSIA_batch(
        cassia_sc.loadmarker("pbmc68k_processed"),
        output,
        model="test-model",
        tissue="blood",
        species="human",
        provider=base_url,
        max_workers=int(workers),
        cache_dir=cache_dir,
        progress=False,
        **batching,
    )
