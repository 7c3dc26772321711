"""Settings for every test of the repository, the doctests in cassia_sc/ included."""

import os

# No dry run asks a provider for its prices (no test touches the internet); the tests
# of the price lists take this off and ask the local server.
os.environ["CASSIA_SC_OFFLINE"] = "1"
