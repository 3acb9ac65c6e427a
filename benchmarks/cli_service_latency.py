"""How long does ``medpg search`` take when a medpg service is running?

Question: with MEDPG_API_KEY set and ``medpg serve`` running (models loaded), what is the wall
time of a hybrid ``medpg search`` from a fresh interpreter? Target: under 1 s on this machine.
The same search in the CLI's own process (no service: it imports torch and loads the query
encoder) and the HTTP request alone are measured beside it, and ``-X importtime`` says what the
service path imports.

Method: a temporary MEDPG_DATA_DIR with MEDPG_MODEL_PROFILE=minilm (the packaged model, no
cross-encoder); ``medpg db upgrade``, ``medpg ingest`` of the first ``--docs`` documents of the
corpus, ``medpg embed``, ``medpg db start`` (the embedded server kept running), an API key from
``medpg keys create``, then ``medpg serve`` on a free port, waited for until /health answers.
Each CLI command runs ``--runs`` times as a subprocess (medians, and the range). ``--variant
NAME=DIR`` runs the CLI commands once more with DIR first on PYTHONPATH (another checkout of
medpg, e.g. one with a change to compare); the service always runs from this checkout.

    python benchmarks/cli_service_latency.py          # writes benchmarks/results/cli_service_latency.md
    python benchmarks/cli_service_latency.py --runs 10 --variant lazy-cli=/tmp/lazy
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import socket
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
RESULT = ROOT / "results" / "cli_service_latency.md"
DEFAULT_CORPUS = REPO / "examples" / "data" / "nfcorpus-sample" / "corpus.jsonl"
QUERY = "Do cholesterol statin drugs cause breast cancer?"
SEARCH = ["search", QUERY, "-k", "10"]
HEAVY = ("torch", "transformers", "sentence_transformers", "sqlalchemy", "alembic", "psycopg", "numpy")


@dataclass
class Timing:
    """Wall seconds per run, and the CPU seconds (user + system) of the child process when known."""

    name: str
    seconds: list[float]
    cpu: list[float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def row(self) -> str:
        cpu = f"{statistics.median(self.cpu):.2f}" if self.cpu else "-"
        return (
            f"| {self.name} | {self.median:.2f} | {min(self.seconds):.2f} | {max(self.seconds):.2f} | {cpu} |"
        )


TABLE_HEAD = ["| what | median s | min s | max s | CPU s (median) |", "|---|---:|---:|---:|---:|"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds for one command; a failure stops the benchmark."""
    seconds, _, out = run_timed(argv, env, cwd)
    return seconds, out


def run_timed(
    argv: list[str], env: dict[str, str], cwd: Path
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU seconds of one command; a failure stops the benchmark."""
    cpu = _children_cpu()
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if out.returncode != 0:
        raise SystemExit(f"{shlex.join(argv[:4])} failed ({out.returncode}): {out.stderr[-2000:]}")
    return seconds, cpu, out


def medpg(
    args: list[str], env: dict[str, str], cwd: Path, *flags: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    return run([sys.executable, *flags, "-m", "medpg.cli", *args], env, cwd)


def repeat(name: str, argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> Timing:
    timed = [run_timed(argv, env, cwd) for _ in range(runs)]
    timing = Timing(name, [t[0] for t in timed], [t[1] for t in timed])
    print(f"{name}: median {timing.median:.2f} s over {runs}", file=sys.stderr)
    return timing


def environment(data_dir: Path, pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(
        MEDPG_DATA_DIR=str(data_dir),
        MEDPG_MODEL_PROFILE="minilm",
        HF_HUB_OFFLINE="1",
        MEDPGTEST_SETTINGS_FILE="",
        PYTHONPATH=pythonpath,
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> float:
    import httpx

    started = time.perf_counter()
    last = "no answer"
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"medpg serve exited with {server.returncode}: {log.read_text()[-3000:]}")
        try:
            answer = httpx.get(f"{url}/health", timeout=1)
            if answer.status_code == 200:
                return time.perf_counter() - started
            last = f"{answer.status_code} {answer.text[:500]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise SystemExit(
        f"medpg serve did not answer /health within {timeout:.0f} s ({last}): {log.read_text()[-3000:]}"
    )


def http_only(url: str, token: str, runs: int) -> tuple[list[Timing], dict[str, float]]:
    """/health and POST /search alone from a warm client, and the service's own timings (medians)."""
    import httpx

    health, search, server = [], [], []
    with httpx.Client(base_url=url, trust_env=False) as client:
        for _ in range(runs):
            started = time.perf_counter()
            client.get("/health", timeout=5).raise_for_status()
            health.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = client.post(
                "/search",
                json={"query": QUERY, "k": 10},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            answer.raise_for_status()
            search.append(time.perf_counter() - started)
            server.append(answer.json()["timings_ms"])
    timings = [
        Timing("GET /health from a warm client", health),
        Timing("POST /search (hybrid) from a warm client", search),
    ]
    for t in timings:
        print(f"{t.name}: median {t.median:.3f} s", file=sys.stderr)
    parts = {name: statistics.median(t.get(name, 0.0) for t in server) for name in ("encode", "sql", "total")}
    return timings, parts


def imported(env: dict[str, str], cwd: Path) -> str:
    """Which heavy modules the service path imports, and the slowest top-level imports."""
    _, out = medpg(SEARCH, env, cwd, "-X", "importtime")
    cumulative: dict[str, int] = {}
    names: set[str] = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, total, field = line.split("|")
            name = field[1:]
            names.add(name.strip().split(".")[0])
            if not name.startswith(" ") and total.strip().isdigit():  # top level: the command's own imports
                cumulative[name.strip()] = int(total.strip())
    heavy = [m for m in HEAVY if m in names]
    slowest = sorted(cumulative.items(), key=lambda kv: -kv[1])[:6]
    shown = ", ".join(f"{n} {us / 1000:.0f} ms" for n, us in slowest)
    return f"heavy modules imported: {', '.join(heavy) or 'none'}; slowest top-level imports: {shown}"


def machine() -> str:
    return one_line()


def render(
    command: str,
    corpus: Path,
    docs: int,
    setup: dict[str, float],
    sections: list[tuple[str, list[Timing], str]],
    http: list[Timing],
    server: dict[str, float],
    in_process: Timing,
    runs: int,
    machine_line: str,
    notes: str,
) -> str:
    shown_corpus = corpus.relative_to(REPO) if corpus.is_relative_to(REPO) else corpus
    lines = [
        "# `medpg search` through a running service",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line}",
        f"- Data: the first {docs} documents of `{shown_corpus}`,"
        " embedded; MEDPG_MODEL_PROFILE=minilm (no cross-encoder)",
        f"- Each figure: a new `python -m medpg.cli ...` process, {runs} runs, wall seconds (median, min, max)"
        " and the process's own CPU seconds (user + system; less sensitive to other load on the machine); query"
        f" {QUERY!r}, k=10, hybrid; the embedded server kept running by `medpg db start`",
        "",
        "## Set-up",
        "",
        "| step | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in setup.items()],
        "",
    ]
    for title, timings, imports in sections:
        lines += [
            f"## {title}",
            "",
            *TABLE_HEAD,
            *[t.row() for t in timings],
            "",
            f"Service path: {imports}.",
            "",
        ]
        search = next(t for t in timings if t.name.startswith("`medpg search` (service"))
        verdict = "meets" if search.median < 1.0 else "misses"
        lines += [
            f"Hybrid `medpg search` through the service {verdict} the 1 s target ({search.median:.2f} s).",
            "",
        ]
    lines += [
        "## For comparison",
        "",
        *TABLE_HEAD,
        *[t.row() for t in http],
        in_process.row(),
        "",
        f"The service's own timings of a hybrid search (medians): query encoding {server['encode']:.1f} ms,"
        f" SQL {server['sql']:.1f} ms, total {server['total']:.1f} ms.",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON Lines corpus")
    parser.add_argument("--docs", type=int, default=200, help="ingest the first N documents")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--in-process-runs", type=int, default=3)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also time the CLI with DIR first on PYTHONPATH (repeatable)",
    )
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the report")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()

    machine_line = machine()
    data_dir = Path(tempfile.mkdtemp(prefix="medpg-cli-service-"))
    data_dir.chmod(0o755)  # the embedded server may run as another user
    env = environment(data_dir, str(REPO))
    setup: dict[str, float] = {}
    server: subprocess.Popen[bytes] | None = None
    try:
        corpus = data_dir / "corpus.jsonl"
        with args.corpus.open("rb") as src:
            corpus.write_bytes(b"".join(line for _, line in zip(range(args.docs), src, strict=False)))
        setup["`medpg db upgrade` (initialises the server, migrates)"] = medpg(
            ["db", "upgrade"], env, data_dir
        )[0]
        setup[f"`medpg ingest` ({args.docs} documents)"] = medpg(["ingest", str(corpus)], env, data_dir)[0]
        setup["`medpg embed`"] = medpg(["embed", "--no-progress"], env, data_dir)[0]
        setup["`medpg db start`"] = medpg(["db", "start"], env, data_dir)[0]
        _, created = medpg(
            ["keys", "create", "--name", "bench", "--scope", "system/DocumentReference.rs"], env, data_dir
        )
        token = created.stdout.strip().splitlines()[-1]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = data_dir / "serve.log"
        log = log_path.open("ab")
        server = subprocess.Popen(
            [sys.executable, "-m", "medpg.cli", "serve", "--port", str(port)],
            env=env,
            cwd=data_dir,
            stdout=log,
            stderr=log,
        )
        setup["`medpg serve` until /health answers (warms the query encoder)"] = wait_for_health(
            url, server, log_path
        )

        variants = [("this checkout", str(REPO))]
        for spec in args.variant:
            name, _, directory = spec.partition("=")
            variants.append((name, os.pathsep.join([str(Path(directory).resolve()), str(REPO)])))
        sections = []
        for name, pythonpath in variants:
            cli_env = {**environment(data_dir, pythonpath), "MEDPG_API_KEY": token, "MEDPG_API_URL": url}
            timings = [
                repeat(
                    "`python -c 'import medpg.cli'`",
                    [sys.executable, "-c", "import medpg.cli"],
                    cli_env,
                    data_dir,
                    args.runs,
                ),
                repeat(
                    "`medpg search` (service, hybrid)",
                    [sys.executable, "-m", "medpg.cli", *SEARCH],
                    cli_env,
                    data_dir,
                    args.runs,
                ),
            ]
            sections.append((f"CLI: {name}", timings, imported(cli_env, data_dir)))
        http, server_timings = http_only(url, token, args.runs)
        in_process = repeat(
            "`medpg search` in its own process (no MEDPG_API_KEY)",
            [sys.executable, "-m", "medpg.cli", *SEARCH],
            env,
            data_dir,
            args.in_process_runs,
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        subprocess.run(
            [sys.executable, "-m", "medpg.cli", "db", "stop"], env=env, cwd=data_dir, capture_output=True
        )
        shutil.rmtree(data_dir, ignore_errors=True)

    machine_line += f", {os.getloadavg()[0]:.2f} at the end"
    command = " ".join(
        ["python", "benchmarks/cli_service_latency.py", *(shlex.quote(a) for a in sys.argv[1:])]
    )
    args.output.write_text(
        render(
            command,
            args.corpus.resolve(),
            args.docs,
            setup,
            sections,
            http,
            server_timings,
            in_process,
            args.runs,
            machine_line,
            args.notes.read_text(encoding="utf-8") if args.notes else "",
        ),
        encoding="utf-8",
    )
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
