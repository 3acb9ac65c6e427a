"""How long does a user wait for the ``medpg`` command, from a fresh interpreter?

Questions:
  1. Cold CLI latency (a new process each time: imports, settings, connect, the work, exit) of
     ``medpg status``, ``medpg search --mode lexical`` and hybrid ``medpg search``, with the
     embedded server kept running by ``medpg db start``: target, lexical search under 1.5 s.
  2. What the embedded server adds: its first initialisation, its start-up under ``medpg db
     start``, and the same commands when no server is running (each call starts and stops one).

Method: a temporary MEDPG_DATA_DIR with MEDPG_MODEL_PROFILE=minilm (the packaged model, no
cross-encoder); ``medpg db upgrade`` (first run: the server is initialised), ``medpg ingest`` of
the corpus, ``medpg embed``. Each command then runs ``--runs`` times as a subprocess (medians
reported, and the range); nothing else of medpg runs meanwhile. Other MEDPG_ variables are
cleared and the working directory is the data directory, so no settings file applies.

    python benchmarks/cli_latency.py                       # writes benchmarks/results/cli_latency.md
    python benchmarks/cli_latency.py --corpus ../shared/data/mtsamples/notes.jsonl --runs 5
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine import one_line

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULT = ROOT / "results" / "cli_latency.md"
DEFAULT_CORPUS = REPO / "examples" / "data" / "nfcorpus-sample" / "corpus.jsonl"
QUERY = "Do cholesterol statin drugs cause breast cancer?"

COMMANDS: dict[str, list[str]] = {
    "medpg --help": ["--help"],
    "medpg status": ["status"],
    "medpg search --mode lexical": ["search", QUERY, "-k", "10", "--mode", "lexical"],
    "medpg search (hybrid)": ["search", QUERY, "-k", "10"],
}
WITHOUT_SERVER = ("medpg status", "medpg search --mode lexical")


@dataclass
class Timing:
    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds for one ``medpg ARGS`` in a new interpreter; a failure stops the benchmark."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "medpg.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"medpg {' '.join(args[:2])} failed ({out.returncode}): {out.stderr[-2000:]}")
    return seconds


def repeat(name: str, args: list[str], env: dict[str, str], cwd: Path, runs: int) -> Timing:
    timing = Timing(name, [run(args, env, cwd) for _ in range(runs)])
    print(f"{name}: median {timing.median:.2f} s over {runs}", file=sys.stderr)
    return timing


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(MEDPG_DATA_DIR=str(data_dir), MEDPG_MODEL_PROFILE="minilm", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def chunk_counts(env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "medpg.cli", "status"], env=env, cwd=cwd, capture_output=True, text=True
    )
    lines = [
        ln.strip()
        for ln in out.stdout.splitlines()
        if ln.strip().startswith(("chunks", "embedded", "documents"))
    ]
    return "; ".join(" ".join(ln.split()) for ln in lines)


def machine() -> str:
    return one_line()


def render(
    command: str,
    corpus: Path,
    counts: str,
    setup: dict[str, float],
    kept: list[Timing],
    cold: list[Timing],
    runs: int,
    machine_line: str,
) -> str:
    def row(t: Timing) -> str:
        return f"| `{t.name}` | {t.median:.2f} | {min(t.seconds):.2f} | {max(t.seconds):.2f} |"

    lexical = next(t for t in kept if t.name == "medpg search --mode lexical")
    verdict = "meets" if lexical.median < 1.5 else "misses"
    lines = [
        "# Cold CLI latency",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line}",
        f"- Data: `{corpus.relative_to(REPO) if corpus.is_relative_to(REPO) else corpus}`; {counts}",
        f"- Each figure: a new `python -m medpg.cli ...` process, {runs} runs, seconds (median, min, max);"
        f" query {QUERY!r}, k=10, MEDPG_MODEL_PROFILE=minilm (no cross-encoder)",
        "",
        "## With the embedded server kept running (`medpg db start`)",
        "",
        "| command | median s | min s | max s |",
        "|---|---:|---:|---:|",
        *[row(t) for t in kept],
        "",
        f"Lexical search {verdict} the 1.5 s target ({lexical.median:.2f} s). Hybrid search adds importing",
        "torch and sentence-transformers and loading the query encoder; the lexical commands import",
        "neither (tests/integration/test_cli_fast.py checks it).",
        "",
        "## The embedded server itself",
        "",
        "| step | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in setup.items()],
        "",
        "Without `medpg db start`, every command starts the server and it stops when the command exits:",
        "",
        "| command (no server running) | median s | min s | max s |",
        "|---|---:|---:|---:|",
        *[row(t) for t in cold],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON Lines or CSV corpus to ingest"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--embed-limit", type=int, default=None, help="embed at most this many chunks")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()

    machine_line = machine()
    data_dir = Path(tempfile.mkdtemp(prefix="medpg-cli-latency-"))
    data_dir.chmod(0o755)  # the embedded server may run as another user
    env = environment(data_dir)
    setup: dict[str, float] = {}
    try:
        setup["first `medpg db upgrade` (initialises the server, migrates)"] = run(
            ["db", "upgrade"], env, data_dir
        )
        setup["`medpg ingest` of the corpus"] = run(["ingest", str(args.corpus.resolve())], env, data_dir)
        embed = ["embed", "--no-progress"] + (["--limit", str(args.embed_limit)] if args.embed_limit else [])
        setup["`medpg embed`" + (f" (--limit {args.embed_limit})" if args.embed_limit else "")] = run(
            embed, env, data_dir
        )
        counts = chunk_counts(env, data_dir)
        cold = [repeat(name, COMMANDS[name], env, data_dir, args.runs) for name in WITHOUT_SERVER]
        setup["`medpg db start` (server start-up, kept running)"] = run(["db", "start"], env, data_dir)
        try:
            kept = [repeat(name, argv, env, data_dir, args.runs) for name, argv in COMMANDS.items()]
        finally:
            run(["db", "stop"], env, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    command = " ".join(["python", "benchmarks/cli_latency.py", *(shlex.quote(a) for a in sys.argv[1:])])
    args.output.write_text(
        render(command, args.corpus.resolve(), counts, setup, kept, cold, args.runs, machine_line),
        encoding="utf-8",
    )
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
