"""A Python with CASSIA 1.4.0 installed, built once per machine, outside the repository.

The interop tests, the tutorial test and the benchmarks run CASSIA's own code beside
ours. CASSIA cannot share our interpreter (its pins and ours differ), so it lives in a
venv of its own, in the user's cache folder::

    ${XDG_CACHE_HOME:-~/.cache}/cassia_sc/venv-cassia-1.4.0

(``CASSIA_SC_CASSIA_VENV`` names another folder). The first caller builds it with
``python -m venv`` and pip, under a file lock, so two processes (the test runs of two
Pythons, a benchmark) never build it at once; every later caller, whichever Python runs
it, finds it ready. A build that stopped half-way has no ready stamp and is built again.

Run ``python tests/cassia_env.py`` to build it ahead of the tests (CI may do so) and print
the interpreter's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

__all__ = [
    "CASSIA_VERSION",
    "cassia_environment",
    "cassia_package_dir",
    "cassia_python",
    "venv_dir",
]

CASSIA_VERSION = "1.4.0"
#: Names another folder for the venv (a CI cache, a read-only image).
VENV_VARIABLE = "CASSIA_SC_CASSIA_VENV"
# Written last, once the version check passed: a venv without it is incomplete.
_READY = ".cassia-ready"
# pip may take minutes on a cold machine; a second caller waits for the first this long.
_LOCK_TIMEOUT = 1800
# Keys of real providers that must never reach CASSIA's process (it is pointed at a local
# server, and a test must not depend on what the machine has set).
_PROVIDER_KEYS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "CUSTOMIZED_API_KEY",
    "DEEPSEEK_API_KEY",
    "GOOGLE_API_KEY",
    "TOGETHER_API_KEY",
    "CASSIA_API_KEY",
)


def venv_dir() -> Path:
    """Return the folder of the shared CASSIA venv (it may not exist yet).

    Returns
    -------
    pathlib.Path
        ``$CASSIA_SC_CASSIA_VENV`` if set, else
        ``${XDG_CACHE_HOME:-~/.cache}/cassia_sc/venv-cassia-1.4.0``.
    """
    override = os.environ.get(VENV_VARIABLE)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cassia_sc" / f"venv-cassia-{CASSIA_VERSION}"


def cassia_python() -> Path:
    """Return the interpreter of the shared venv, building the venv the first time.

    Returns
    -------
    pathlib.Path
        ``bin/python`` of :func:`venv_dir`, with ``cassia==1.4.0`` importable.

    Raises
    ------
    RuntimeError
        The build failed (pip could not install CASSIA), or the installed version is not
        1.4.0.
    """
    folder = venv_dir()
    python = folder / "bin" / "python"
    if _ready(folder):
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock", timeout=_LOCK_TIMEOUT):
        if _ready(folder):  # built by another process while this one waited
            return python
        _build(folder)
    return python


def cassia_package_dir() -> Path:
    """Return the installed ``CASSIA`` package folder in the shared venv.

    Returns
    -------
    pathlib.Path
        The folder holding CASSIA's ``__init__.py`` (and its ``data/``).
    """
    # Found, not imported: importing CASSIA takes 4 s, finding it a few milliseconds.
    find = "import importlib.util as u; print(u.find_spec('CASSIA').submodule_search_locations[0])"
    found = subprocess.run(
        [str(cassia_python()), "-c", find],
        capture_output=True,
        text=True,
        check=True,
        env=cassia_environment(),
    )
    return Path(found.stdout.strip().splitlines()[-1])


def cassia_environment(**extra: str) -> dict[str, str]:
    """Return the environment to run CASSIA's interpreter with.

    This process's environment without the provider keys and without anything that would
    put our venv's packages on CASSIA's path; plots to files, no warnings, the loopback
    never proxied.

    Parameters
    ----------
    **extra
        Variables to set on top (e.g. ``CUSTOMIZED_API_KEY``).

    Returns
    -------
    dict[str, str]
        The environment.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in _PROVIDER_KEYS and name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    environment |= {
        "MPLBACKEND": "Agg",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONWARNINGS": "ignore",
        "PYTHONIOENCODING": "utf-8",
    }
    return environment | extra


def _ready(folder: Path) -> bool:
    """Whether the venv was built to the end and still holds CASSIA 1.4.0."""
    return (folder / _READY).is_file() and _installed_version(folder / "bin" / "python") == (
        CASSIA_VERSION
    )


def _installed_version(python: Path) -> str | None:
    """CASSIA's version as the venv's metadata says (no import of CASSIA: that takes 4 s)."""
    if not python.exists():
        return None
    check = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('cassia'))"],
        capture_output=True,
        text=True,
        env=cassia_environment(),
    )
    return check.stdout.strip() if check.returncode == 0 else None


def _build(folder: Path) -> None:
    """Build the venv from nothing (a half-built one is removed first)."""
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building {folder} with cassia=={CASSIA_VERSION} ...", file=sys.stderr, flush=True)
    environment = cassia_environment()
    # This interpreter's base Python (not our venv) becomes the new venv's home, so the
    # venv outlives the venv of the test run that built it.
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, env=environment)
    python = folder / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"cassia=={CASSIA_VERSION}"],
        capture_output=True,
        text=True,
        env=environment,
    )
    if install.returncode != 0:
        raise RuntimeError(
            f"pip could not install cassia=={CASSIA_VERSION} into {folder}:\n"
            f"{install.stdout[-3000:]}{install.stderr[-3000:]}"
        )
    found = _installed_version(python)
    if found != CASSIA_VERSION:
        raise RuntimeError(f"{folder} holds cassia {found}, not {CASSIA_VERSION}.")
    (folder / _READY).write_text(f"cassia=={CASSIA_VERSION}\n")


if __name__ == "__main__":
    print(cassia_python())
