"""``python -m cassia_sc``: the ``cassia-sc`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a tool (e.g. pytest's doctest collector) imports it
    sys.exit(main())
