"""The package's layout holds: one-way rooms, names in one place, Scanpy's conventions.

The import graph is read from each module's source (``ast``), so a cycle or an upward
import fails here before it can fail at import time in some order of imports.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

import pytest
from anndata import AnnData

import cassia_sc
from cassia_sc import cli, compat, pl, tl
from cassia_sc._docs import PARAMETERS, cli_help

PACKAGE = Path(cassia_sc.__file__).parent

#: The rooms, bottom to top: a module may import from its own room and those below only.
ROOMS: list[tuple[str, set[str]]] = [
    ("foundation", {"_version", "_keys", "_io", "errors", "_docs", "_stops"}),
    (
        "inputs and parsing",
        {
            "markers",
            "replies",
            "prompts",
            "providers",
            "cache",
            "ontology",
            "h5ad",
            "datasets",
            "subclusters",
            "plausibility",
        },
    ),
    (
        "results and evidence",
        {"fields", "costs", "results", "cassia_files", "evaluation", "evidence", "levels"},
    ),
    ("model client", {"llm", "api_keys", "pricing", "budget", "provider_batches", "rounds"}),
    ("agents", {"agents"}),
    ("batch", {"batch"}),
    ("repeated runs", {"uncertainty"}),
    ("the whole run", {"workflow"}),
    ("reading back", {"get"}),
    ("plots", {"pl"}),
    ("writers", {"export"}),
    ("CASSIA's entry points", {"compat"}),
    ("tools", {"tl"}),
    ("several inputs", {"many"}),
    ("command line", {"cli", "__main__"}),
    ("package", {""}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def exists(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """Each cassia_sc module ``path`` imports, and whether at the top of the module."""
    name = module_name(path)
    here = name if is_package(name) else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in ast.walk(tree) if _at_module_level(tree, node)}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "cassia_sc"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "cassia_sc":
                continue
            targets = [source]
            targets += [f"{source}.{a.name}" for a in node.names if exists(f"{source}.{a.name}")]
        for target in targets:
            # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless they are
            # this module's own packages (being imported already).
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if depth == len(parts) or not name.startswith(prefix + "."):
                    found.append((prefix, id(node) in top_level))
    return [(target, top) for target, top in found if target != name]


def _at_module_level(tree: ast.Module, node: ast.AST) -> bool:
    def walk(body: list[ast.stmt]) -> bool:
        for statement in body:
            if statement is node:
                return True
            if isinstance(statement, ast.If | ast.Try) and walk(
                statement.body
                + getattr(statement, "orelse", [])
                + [s for h in getattr(statement, "handlers", []) for s in h.body]
            ):
                return True
        return False

    return walk(tree.body)


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    return {
        module_name(path): imports_of(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if "templates" not in path.parts
    }


def room_of(name: str) -> int:
    first = name.split(".")[1] if "." in name else ""
    for index, (_, members) in enumerate(ROOMS):
        if first in members:
            return index
    raise AssertionError(f"{name} is in no room: add it to ROOMS and to docs/architecture.md")


def find_cycle(graph: dict[str, list[tuple[str, bool]]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target, _ in graph.get(node, []):
            if target == "cassia_sc":
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if state.get(target) is None and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_a_cycle_and_an_upward_import():
    graph = {
        "cassia_sc.batch": [("cassia_sc.export", True)],
        "cassia_sc.export": [("cassia_sc.batch", False)],
    }
    assert find_cycle(graph) == ["cassia_sc.batch", "cassia_sc.export", "cassia_sc.batch"]
    assert room_of("cassia_sc.batch") < room_of("cassia_sc.export")
    relative = imports_of(PACKAGE / "export" / "report.py")
    assert ("cassia_sc.pl", True) in relative and ("cassia_sc.results", True) in relative


def test_no_import_cycle_inside_the_package():
    assert find_cycle(import_graph()) is None


def test_every_module_imports_only_its_own_room_and_those_below():
    upward = [
        f"{name} ({ROOMS[room_of(name)][0]}) imports {target} ({ROOMS[room_of(target)][0]})"
        for name, targets in import_graph().items()
        for target, _ in targets
        if room_of(target) > room_of(name)
    ]
    assert upward == []


def test_no_module_of_ours_is_imported_inside_a_function():
    hidden = [
        f"{name} imports {target} inside a function"
        for name, targets in import_graph().items()
        for target, top in targets
        if not top
    ]
    assert hidden == []


# ----------------------------------------------------------------------- names in one place

#: Values that must come from cassia_sc._keys, never be spelled out as a default.
SPELLED_ONCE = {"cassia", "openrouter", "rank_genes_groups", "umap", "v1", "avg_log2FC"}


def test_defaults_and_obs_names_come_from_the_names_module():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keys.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.arguments):
                for default in [*node.defaults, *node.kw_defaults]:
                    if isinstance(default, ast.Constant) and default.value in SPELLED_ONCE:
                        offences.append(f"{path.name}:{default.lineno} default {default.value!r}")
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant)).lstrip(
                    "_"
                )
                if text in {"celltype", "subtype", "agreement", "celltype_ontology_term_id"}:
                    offences.append(f"{path.name}:{node.lineno} builds an obs name")
    assert offences == []


# ------------------------------------------------------------------------ shared descriptions


def test_parameters_are_described_once_and_the_same_everywhere():
    functions = [
        cassia_sc.run_batch,
        tl.annotate,
        compat.runCASSIA_batch,
        compat.run_batch_to_files,
        cassia_sc.plan,
        pl.review,
        pl.evaluation,
    ]
    for function in functions:
        doc = function.__doc__ or ""
        assert "As in :func:" not in doc and "as in run_batch" not in doc.lower()
    unfilled = [
        f"{info.name}.{name}"
        for info in pkgutil.walk_packages(cassia_sc.__path__, prefix="cassia_sc.")
        for name, value in vars(importlib.import_module(info.name)).items()
        if callable(value)
        and any(
            line.strip().strip("{}") in PARAMETERS
            for line in (value.__doc__ or "").split("\n")
            if line.strip().startswith("{")
        )
    ]
    assert unfilled == []
    for name in ("tissue", "species", "model", "provider", "n_genes", "max_workers"):
        entry = f"{name}\n    {PARAMETERS[name]}"
        for function in (cassia_sc.run_batch, tl.annotate, compat.runCASSIA_batch):
            assert entry in inspect.getdoc(function)


def test_the_command_line_speaks_the_same_options_and_defaults():
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    annotate = {a.dest: a for a in subcommands["annotate"]._actions}
    batch = {a.dest: a for a in subcommands["batch"]._actions}
    assert annotate["tissue"].help == cli_help("tissue").replace("%%", "%")
    assert (
        annotate["n_genes"].default == inspect.signature(tl.annotate).parameters["n_genes"].default
    )
    # Every option of run_batch has a flag, but those the shell has no use for.
    not_on_the_command_line = {
        "marker",  # the positional INPUT / MARKERS
        "api_key",  # never on a command line, which others can read: the key variables
        "client",  # a Python object
        "budget",  # a Python object, shared between runs (--max-cost and --max-tokens-total)
        "sample",  # internal to repeated runs (--n-runs)
        "ontology",  # on when the extra is installed
        "cache",  # --no-cache
        "progress",  # --quiet
        "key",  # annotate only (batch reads tables)
        "groupby",  # annotate only
        "gene_symbols",  # annotate only
    }
    for name in inspect.signature(cassia_sc.run_batch).parameters:
        if name not in not_on_the_command_line:
            assert name in batch, f"cassia-sc batch has no --{name.replace('_', '-')}"
    for name in inspect.signature(tl.annotate).parameters:
        if name not in {"adata", "copy", "options"}:
            assert name in annotate, f"cassia-sc annotate has no --{name.replace('_', '-')}"


# ------------------------------------------------------------------------- Scanpy conventions


@pytest.mark.parametrize("name", tl.__all__)
def test_tl_functions_follow_scanpy_signature_conventions(name):
    function = getattr(tl, name)
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    assert parameters[0].name == "adata"
    hints = typing.get_type_hints(function, globalns=vars(inspect.getmodule(function)))
    assert hints["return"] == AnnData | None
    assert signature.parameters["copy"].default is False
    assert signature.parameters["copy"].kind is inspect.Parameter.KEYWORD_ONLY
    # adata and at most one positional argument (the grouping, the truth), then keywords
    positional = [p for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert len(positional) <= 2


@pytest.mark.parametrize("name", pl.__all__)
def test_pl_functions_take_adata_then_keywords_and_show(name):
    signature = inspect.signature(getattr(pl, name))
    parameters = list(signature.parameters.values())
    assert parameters[0].name == "adata"
    assert all(
        p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
        for p in parameters[1:]
    )
    assert {"show", "return_fig"} <= set(signature.parameters)


def test_every_exception_class_lives_in_errors():
    elsewhere = []
    for info in pkgutil.walk_packages(cassia_sc.__path__, prefix="cassia_sc."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("cassia_sc")
                and value.__module__ != "cassia_sc.errors"
            ):
                elsewhere.append(f"{value.__module__}.{name}")
    assert elsewhere == []
