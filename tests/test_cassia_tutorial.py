"""The Python code of CASSIA's own documentation runs with ``import cassia_sc as CASSIA``.

CASSIA 1.4.0 ships its documentation inside its wheel (``CASSIA/data/
CASSIA_Package_Documentation.md``); it is read at test time from CASSIA's venv
(``tests/cassia_env.py``), never copied here. Each of its Python blocks is listed in
:data:`BLOCKS`, covered or not, with the reason; a block the documentation gains or loses
fails :func:`test_every_block_of_the_documentation_is_listed`.

A covered block runs as its reader would run it: after the blocks it needs (whose variables
and files it uses), in a new working folder, with one change each: ``import CASSIA``
becomes ``import cassia_sc as CASSIA``, and every ``provider="openai" | "anthropic" |
"openrouter"`` becomes the base URL of a local scripted server. The model names stay as
written: the server answers any name.

Every covered block runs in one Python process (a process per block paid 2 s each to import
cassia_sc, and ran the pipeline block six times). The blocks form a tree, each under the
last block it needs: a block runs in a copy of what that block left (its variables, its
working folder, its environment, where API keys live, and its cache folder), so it sees
what its needs made and nothing of the blocks beside it (but what cassia_sc keeps in
memory), as in a process of its own. The process tells the test when each block starts and
ends, and waits for its answer, so every request the server records belongs to the block
that sent it; each block's test asserts on its own outcome.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from cassia_env import cassia_package_dir
from cassia_model import CassiaModel, Exchange
from llm_server import LLMServer, RecordedRequest

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
# Keys of real providers: the tutorial's process must not see the machine's (the module's
# fixture starts before the autouse fixture of conftest.py removes them from this one).
PROVIDER_KEYS = (
    "OPENROUTER_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "CASSIA_API_KEY",
    "CUSTOMIZED_API_KEY",
    "DEEPSEEK_API_KEY",
)


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


# -- one process runs every covered block --------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One block run in the tutorial's process, in a copy of what step ``parent`` left."""

    name: str
    parent: int | None
    code: str


@dataclass
class Ran:
    """What one step did: its error (empty when it ran to the end), output and requests."""

    step: Step
    folder: Path
    error: str = ""
    output: str = ""
    exchanges: list[Exchange] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)


def plan(documented: dict[str, str], base_url: str) -> tuple[list[Step], dict[str, list[int]]]:
    """The steps that run every covered block, and each block's chain of steps.

    A block's chain is its needs, then itself; chains that begin alike share those steps.
    """
    steps: list[Step] = []
    node: dict[tuple[str, ...], int] = {}
    chains: dict[str, list[int]] = {}
    for name in COVERED:
        chain = (*BLOCKS[name].needs, name)
        for end in range(1, len(chain) + 1):
            prefix = chain[:end]
            if prefix not in node:
                code = ours(documented[prefix[-1]], base_url, BLOCKS[prefix[-1]].edits)
                # Nothing is left to reach a real provider.
                assert not re.search(r'"(openai|anthropic|openrouter)"', code), code
                steps.append(Step(prefix[-1], node.get(prefix[:-1]), code))
                node[prefix] = len(steps) - 1
        chains[name] = [node[chain[:end]] for end in range(1, len(chain) + 1)]
    return steps, chains


def _run_steps(plan_file: str) -> None:
    """Run the planned steps, each in a copy of the variables, folder, environment and
    cache its parent step left.

    Its source is the whole script of the tutorial's process, so that process imports
    nothing of the tests: only what the blocks import.
    """
    import builtins
    import copy
    import json
    import os
    import shutil
    import sys
    import traceback
    from pathlib import Path

    plan = json.loads(Path(plan_file).read_text(encoding="utf-8"))
    steps = plan["steps"]
    # A pipe of its own, so that nothing a block prints (a progress bar) gets in the way.
    marks = os.fdopen(plan["marks"], "w", encoding="utf-8")
    first = dict(os.environ)
    left: dict[int, tuple[dict, dict[str, str]]] = {}  # step -> its variables, environment
    errors: list[str] = []

    def tell(what: str, index: int) -> None:
        # The test notes what its server has recorded so far, then answers.
        sys.stdout.flush()
        sys.stderr.flush()
        marks.write(f"{what} {index}\n")
        marks.flush()
        sys.stdin.readline()

    for index, step in enumerate(steps):
        parent = step["parent"]
        if parent is not None and errors[parent]:
            errors.append(f"not run: {steps[parent]['name']!r}, which it needs, failed")
            continue
        folder, cache = Path(step["folder"]), Path(step["cache"])
        namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
        environment = first
        if parent is None:
            folder.mkdir(parents=True)
        else:
            variables, environment = left[parent]
            memo: dict = {}
            for name, value in variables.items():
                try:  # a copy, so that a block beside this one sees the parent's own
                    namespace[name] = copy.deepcopy(value, memo)
                except Exception:  # a module cannot be copied, nor changed by a block
                    namespace[name] = value
            shutil.copytree(steps[parent]["folder"], folder)
            if Path(steps[parent]["cache"]).exists():
                shutil.copytree(steps[parent]["cache"], cache)
        os.environ.clear()
        os.environ.update(environment | {"CASSIA_SC_CACHE_DIR": str(cache)})
        os.chdir(folder)
        tell("start", index)
        try:
            # Compiled from its file, so that a traceback shows the block's lines.
            script = Path(step["script"])
            exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)
            errors.append("")
        except BaseException:
            errors.append(traceback.format_exc())
        tell("end", index)
        variables = {k: v for k, v in namespace.items() if not k.startswith("__")}
        left[index] = (variables, dict(os.environ))
    Path(plan["errors"]).write_text(json.dumps(errors), encoding="utf-8")


def run_steps(steps: list[Step], work: Path, server: LLMServer, model: CassiaModel) -> list[Ran]:
    """Run ``steps`` in one new Python process; return what each did."""
    ran = [Ran(step, work / f"step-{i}") for i, step in enumerate(steps)]
    listed = []
    for i, step in enumerate(steps):
        script = work / f"step-{i}.py"
        script.write_text(step.code, encoding="utf-8")
        listed.append(
            {
                "name": step.name,
                "parent": step.parent,
                "script": str(script),
                "folder": str(ran[i].folder),
                "cache": str(work / f"cache-{i}"),
            }
        )
    errors_file = work / "errors.json"
    plan_file = work / "plan.json"
    marks, their_marks = os.pipe()
    plan_file.write_text(
        json.dumps({"steps": listed, "marks": their_marks, "errors": str(errors_file)}),
        encoding="utf-8",
    )
    runner = work / "tutorial.py"
    runner.write_text(
        f"{inspect.getsource(_run_steps)}\n\nif __name__ == '__main__':\n"
        f"    _run_steps({str(plan_file)!r})\n",
        encoding="utf-8",
    )
    environment = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS} | {
        "MPLBACKEND": "Agg",
        # The cassia_sc under test, whatever else the interpreter has installed.
        "PYTHONPATH": str(Path(cassia_sc.__file__).parents[1]),
    }
    log_file = work / "output.txt"
    with open(log_file, "wb") as log:  # a file: the process never waits for it to be read
        process = subprocess.Popen(
            [sys.executable, str(runner)],
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            pass_fds=(their_marks,),
        )
    os.close(their_marks)
    assert process.stdin is not None
    timer = threading.Timer(TIMEOUT, process.kill)  # a hung block fails, as before
    timer.start()
    at: dict[tuple[str, int], tuple[int, int, int]] = {}  # (start|end, step) -> counts
    try:
        with os.fdopen(marks, encoding="utf-8") as told:
            for line in told:
                what, index = line.split()
                size = log_file.stat().st_size
                at[what, int(index)] = (len(model.exchanges), len(server.requests), size)
                with contextlib.suppress(BrokenPipeError):  # it died: its output says why
                    process.stdin.write("\n")
                    process.stdin.flush()
        process.wait()
    finally:
        timer.cancel()
        process.kill()
    printed = log_file.read_bytes()
    output = printed.decode(errors="replace")
    assert process.returncode == 0 and errors_file.exists(), f"{output[-6000:]}"
    covered: set[int] = set()
    for i, error in enumerate(json.loads(errors_file.read_text(encoding="utf-8"))):
        ran[i].error = error
        if ("start", i) not in at:
            continue  # not run: a block it needs failed
        (e0, r0, l0), (e1, r1, l1) = at["start", i], at["end", i]
        ran[i].exchanges = model.exchanges[e0:e1]
        ran[i].requests = server.requests[r0:r1]
        ran[i].output = printed[l0:l1].decode(errors="replace")
        covered |= set(range(r0, r1))
    # A request sent while no block ran would belong to none of them.
    stray = [r.model for n, r in enumerate(server.requests) if n not in covered]
    assert not stray, f"requests outside every block: {stray}\n{output[-6000:]}"
    return ran


@dataclass
class Tutorial:
    """Every covered block, run: the steps, and each block's chain of them."""

    ran: list[Ran]
    chains: dict[str, list[int]]

    def chain(self, name: str) -> list[Ran]:
        """What each step of the block's chain (its needs, then itself) did."""
        return [self.ran[i] for i in self.chains[name]]


@pytest.fixture(scope="module")
def tutorial(documented, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tutorial]:
    """Every covered block, run in one process against one scripted server."""
    model = CassiaModel()
    with LLMServer(model) as server:
        steps, chains = plan(documented, server.base_url)
        work = tmp_path_factory.mktemp("tutorial")
        yield Tutorial(run_steps(steps, work, server, model), chains)


@pytest.mark.parametrize("name", COVERED)
def test_a_covered_block_runs(name, tutorial):
    chain = tutorial.chain(name)
    for ran in chain:
        assert not ran.error, (
            f"{ran.step.name}:\n{ran.step.code}\n\n{ran.output[-4000:]}\n{ran.error}"
        )
    folder = chain[-1].folder
    for pattern in BLOCKS[name].produces:
        assert list(folder.glob(pattern)), f"{name} wrote no {pattern}"
    exchanges = [e for ran in chain for e in ran.exchanges]
    assert bool(exchanges) == BLOCKS[name].calls_model
    models = {exchange.model for exchange in exchanges}
    assert models <= DOCUMENTED_MODELS, models
    keys = {r.headers.get("authorization") for ran in chain for r in ran.requests}
    assert keys <= {f"Bearer {DOCUMENTED_KEY}"}, keys
    if name == SCORING:
        scored = pd.read_csv(folder / "intestine_batch_analysis_scored.csv")
        assert scored["Score"].notna().all()
