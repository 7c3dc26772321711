"""``python -m cassia_sc``: the ``cassia-sc`` command."""

import sys

from .cli import main

sys.exit(main())
