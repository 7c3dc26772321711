"""The Python code of CASSIA's own documentation runs with ``import cassia_sc as CASSIA``.

CASSIA 1.4.0 ships its documentation inside its wheel (``CASSIA/data/
CASSIA_Package_Documentation.md``); it is read at test time from CASSIA's venv
(``tests/cassia_env.py``), never copied here. Each of its Python blocks is listed in
:data:`BLOCKS`, covered or not, with the reason; a block the documentation gains or loses
fails :func:`test_every_block_of_the_documentation_is_listed`.

A covered block runs as its reader would run it: after the blocks it needs (whose variables
and files it uses), in a new Python process whose working folder is a new temporary one,
with one change each: ``import CASSIA`` becomes ``import cassia_sc as CASSIA``, and every
``provider="openai" | "anthropic" | "openrouter"`` becomes the base URL of a local scripted
server. The model names stay as written: the server answers any name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from cassia_env import cassia_package_dir
from cassia_model import CassiaModel

import cassia_sc

pytestmark = pytest.mark.slow

DOCUMENTATION = Path("data") / "CASSIA_Package_Documentation.md"
# The model names the documentation's blocks give; every request must name one of them.
DOCUMENTED_MODELS = {"anthropic/claude-sonnet-5"}
# The key the documentation sets (for "openrouter", here the local server) before its first
# model call: every request must carry it.
DOCUMENTED_KEY = "your-openrouter-key"
_NAMED_PROVIDER = re.compile(r'\b(\w*provider)(\s*=\s*)"(?:openai|anthropic|openrouter)"')
_IMPORT = re.compile(r"^(\s*)import CASSIA\s*$", re.M)
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    """What the test does with one Python block of the documentation.

    Attributes
    ----------
    covered
        Whether cassia_sc runs it.
    reason
        Why it is not covered (empty when it is).
    needs
        The blocks run before it, in order: their variables and files are its input.
    produces
        Files (glob patterns) it must leave in the working folder.
    edits
        ``(text, replacement)`` pairs for a block that fails with CASSIA 1.4.0 too, each
        with its reason in ``reason``; the text must be in the block.
    calls_model
        Whether it (or a block it needs) calls the model.
    """

    covered: bool
    reason: str = ""
    needs: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    edits: tuple[tuple[str, str], ...] = ()
    calls_model: bool = True


# Every Python block, by the heading above it.
PIPELINE = "4.2. The All-in-One Pipeline"
BATCH = "Step 1: Batch Annotation"
SCORING = "Step 2: Quality Scoring"
BLOCKS: dict[str, Block] = {
    "3.1. API Keys": Block(covered=True, calls_model=False),
    PIPELINE: Block(
        covered=True,
        reason="edited: CASSIA 1.4.0's runCASSIA_pipeline takes marker=, and fails on the "
        "documentation's marker_path= too",
        edits=(("marker_path=unprocessed_markers", "marker=unprocessed_markers"),),
        produces=(
            "Full_Analysis_Results_summary.csv",
            "Full_Analysis_Results_full.csv",
            "Full_Analysis_Results_conversations.json",
            "Full_Analysis_Results_report.html",
        ),
    ),
    BATCH: Block(
        covered=True,
        needs=(PIPELINE,),  # unprocessed_markers
        produces=(
            "intestine_batch_analysis_summary.csv",
            "intestine_batch_analysis_full.csv",
            "intestine_batch_analysis_conversations.json",
        ),
    ),
    SCORING: Block(
        covered=True, needs=(PIPELINE, BATCH), produces=("intestine_batch_analysis_scored.csv",)
    ),
    "Step 3: Generate HTML Report": Block(
        covered=True, needs=(PIPELINE, BATCH, SCORING), produces=("intestine_report.html",)
    ),
    "5.1. Annotation Boost": Block(
        covered=True,
        needs=(PIPELINE, BATCH),
        produces=("monocyte_boost_report*",),
        reason="edited: the cluster of CASSIA's example set is 'monocyte (inaccurate "
        "annotation)', and CASSIA 1.4.0 refuses 'monocyte' too",
        edits=(('cluster_name="monocyte"', 'cluster_name="monocyte (inaccurate annotation)"'),),
    ),
    "5.2. Symphony Compare (Advanced Cell Type Comparison)": Block(
        covered=False,
        reason="CASSIA's multi-agent debate between named cell types (symphonyCompare, its "
        "model presets) has no counterpart in cassia_sc",
    ),
    "5.3. Uncertainty Quantification": Block(
        covered=True,
        needs=(PIPELINE,),
        produces=(
            "intestine_uncertainty_run_1_summary.csv",
            "intestine_uncertainty_run_3_summary.csv",
            "intestine_uncertainty_scores*",
        ),
    ),
    "6. Extensibility: Adding a New LLM Provider": Block(
        covered=False,
        reason="a fragment of CASSIA's own llm_utils.py (an elif without its if), shown to "
        "explain editing CASSIA's source; cassia_sc takes any OpenAI-compatible base URL as "
        "provider instead",
    ),
    "Conceptual FastAPI Endpoints": Block(
        covered=False,
        reason="an outline of a web service: needs FastAPI and a server, and calls "
        "runCASSIA_pipeline with provider= and model=, which CASSIA 1.4.0's own "
        "runCASSIA_pipeline does not take either",
    ),
}
COVERED = [name for name, block in BLOCKS.items() if block.covered]


def python_blocks(text: str) -> dict[str, str]:
    """The documentation's Python blocks, dedented, by the heading above each."""
    blocks: dict[str, str] = {}
    heading, fence, lines = "", None, []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
            elif stripped.startswith("```"):
                fence, lines = stripped[3:].strip(), []
        elif stripped == "```":
            if fence == "python":
                assert heading not in blocks, f"two Python blocks under {heading!r}"
                blocks[heading] = textwrap.dedent("\n".join(lines))
            fence = None
        else:
            lines.append(line)
    return blocks


@pytest.fixture(scope="module")
def documented() -> dict[str, str]:
    """The Python blocks of the documentation in CASSIA 1.4.0's wheel."""
    text = (cassia_package_dir() / DOCUMENTATION).read_text(encoding="utf-8")
    return python_blocks(text)


def ours(code: str, base_url: str, edits: tuple[tuple[str, str], ...] = ()) -> str:
    """A block as it runs here: cassia_sc imported as CASSIA, named providers local."""
    for text, replacement in edits:
        assert text in code, f"the block no longer says {text!r}"
        code = code.replace(text, replacement)
    code = _IMPORT.sub(r"\1import cassia_sc as CASSIA", code)
    return _NAMED_PROVIDER.sub(lambda m: f'{m.group(1)}{m.group(2)}"{base_url}"', code)


def test_every_block_of_the_documentation_is_listed(documented):
    assert list(documented) == list(BLOCKS)
    for name, block in BLOCKS.items():
        # A block runs as written (or edited, with the reason), or says why it is not run.
        assert block.covered != bool(block.reason) or block.edits, name
        assert bool(block.edits) <= block.covered, name
        assert all(BLOCKS[n].covered for n in block.needs), f"{name} needs an uncovered block"


def test_the_covered_blocks_call_what_cassia_sc_has(documented):
    # Each CASSIA.name a covered block calls exists in cassia_sc: a missing one fails here,
    # by its name, rather than as a traceback of the block.
    for name in COVERED:
        called = set(re.findall(r"\bCASSIA\.(\w+)", documented[name]))
        missing = sorted(c for c in called if not hasattr(cassia_sc, c))
        assert not missing, f"{name}: cassia_sc has no {missing}"


@pytest.mark.parametrize("name", COVERED)
def test_a_covered_block_runs(name, documented, scripted_llm, tmp_path):
    model = CassiaModel()
    llm = scripted_llm(handler=model)
    chain = [*BLOCKS[name].needs, name]
    script = "\n\n".join(
        f"print({f'--- {step}'!r}, flush=True)\n"
        + ours(documented[step], llm.base_url, BLOCKS[step].edits)
        for step in chain
    )
    # Nothing is left to reach a real provider.
    assert not re.search(r'"(openai|anthropic|openrouter)"', script), script
    (tmp_path / "tutorial.py").write_text(script, encoding="utf-8")
    environment = os.environ | {
        "MPLBACKEND": "Agg",
        "CASSIA_SC_CACHE_DIR": str(tmp_path / "c"),
        # The cassia_sc under test, whatever else the interpreter has installed.
        "PYTHONPATH": str(Path(cassia_sc.__file__).parents[1]),
    }
    done = subprocess.run(
        [sys.executable, "tutorial.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )
    assert done.returncode == 0, f"{script}\n\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    for pattern in BLOCKS[name].produces:
        assert list(tmp_path.glob(pattern)), f"{name} wrote no {pattern}"
    assert bool(model.exchanges) == BLOCKS[name].calls_model
    models = {exchange.model for exchange in model.exchanges}
    assert models <= DOCUMENTED_MODELS, models
    keys = {r.headers.get("authorization") for r in llm.server.requests}
    assert keys <= {f"Bearer {DOCUMENTED_KEY}"}, keys
    if name == SCORING:
        scored = pd.read_csv(tmp_path / "intestine_batch_analysis_scored.csv")
        assert scored["Score"].notna().all()
