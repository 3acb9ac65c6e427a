"""How does ``medpg serve`` hold up under concurrent mixed traffic, and what does the API add?

Questions:
  1. Load: 16 concurrent clients for 60 s against ``medpg serve`` on loopback, 80% hybrid searches
     (NFCorpus sample queries, k=10) and 20% upserts of 5 new documents each (``POST /documents``).
     Throughput, p50/p95/p99 per kind, errors. Targets: zero errors; zero lost writes (every
     acknowledged upsert is in the database afterwards, checked by id).
  2. Overhead: the same queries, interleaved one by one, as a direct ``medpg.search()`` call in this
     process and as ``POST /search`` to the service (one client, nothing else running). The API
     overhead is the difference of the medians; target under 5 ms.

Method: a data directory with the NFCorpus sample (600 abstracts) ingested and embedded with the
packaged MiniLM (kept between runs with --data-dir); a tenant-wide key with read, search and write
scopes; ``medpg serve`` as a subprocess on the embedded PostgreSQL this process also uses. Every
request is authenticated, runs under row-level security and writes its audit row.

    python benchmarks/api_load.py                     # writes benchmarks/results/api_load.md
    python benchmarks/api_load.py --clients 16 --seconds 60 --data-dir /tmp/medpg-api-bench
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULT = ROOT / "results" / "api_load.md"
SAMPLE = REPO / "examples" / "data" / "nfcorpus-sample"


@dataclass
class Kind:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def queries() -> list[str]:
    return [orjson.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").read_text().splitlines() if line]


def prepare(env: dict[str, str]) -> None:
    """Ingest and embed the sample once (both are no-ops when already done)."""
    for args in (["db", "upgrade"], ["ingest", str(SAMPLE), "--source", "nfcorpus", "--no-progress"],
                 ["embed", "--no-progress"]):
        subprocess.run([sys.executable, "-m", "medpg.cli", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(
    url: str, token: str, clients: int, seconds: float, qs: list[str]
) -> tuple[dict[str, Kind], list[str], float]:
    kinds = {"search": Kind(), "upsert": Kind()}
    acknowledged: list[str] = []
    counter = itertools.count()
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while time.perf_counter() < deadline:
                if rng.random() < 0.8:
                    kind, path = "search", "/search"
                    body: dict[str, object] = {"query": rng.choice(qs), "k": 10}
                else:
                    kind, path = "upsert", "/documents"
                    ids = [f"load-{next(counter)}" for _ in range(5)]
                    body = {"source": "load", "documents": [
                        {"id": i, "title": f"Load test note {i}", "text": "Statin therapy and LDL cholesterol "
                         f"reduction in patients with coronary disease, note {i}."} for i in ids]}
                t0 = time.perf_counter()
                try:
                    r = await http.post(path, json=body)
                except httpx.HTTPError as exc:
                    kinds[kind].error(type(exc).__name__)
                    continue
                elapsed = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    kinds[kind].latencies.append(elapsed)
                    if kind == "upsert":
                        acknowledged.extend(ids)
                else:
                    kinds[kind].error(f"HTTP {r.status_code}")

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return kinds, acknowledged, time.perf_counter() - started


def overhead(url: str, token: str, qs: list[str], runs: int) -> tuple[list[float], list[float], list[float]]:
    """Direct medpg.search() and POST /search, interleaved; also the service's own time per call."""
    import medpg
    from medpg.access import Scope
    from medpg.config import load_settings
    from medpg.db import Database

    settings = load_settings()
    db = Database(settings)
    scope = Scope("default")
    direct, api, inside = [], [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for i in range(runs + 5):
            q = qs[i % len(qs)]

            def direct_call(q: str = q) -> float:
                t0 = time.perf_counter()
                medpg.search(q, k=10, db=db, settings=settings, scope=scope)
                return (time.perf_counter() - t0) * 1000

            def api_call(q: str = q) -> tuple[float, httpx.Response]:
                t0 = time.perf_counter()
                response = http.post("/search", json={"query": q, "k": 10})
                return (time.perf_counter() - t0) * 1000, response

            if i % 2:  # alternate which goes first, so neither always finds the other's caches warm
                d = direct_call()
                a, r = api_call()
            else:
                a, r = api_call()
                d = direct_call()
            r.raise_for_status()
            if i >= 5:  # warm-up
                direct.append(d)
                api.append(a)
                inside.append(float(r.json()["timings_ms"]["total"]))
    db.dispose()
    return direct, api, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--overhead-runs", type=int, default=200)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/medpg-api-bench"))
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(MEDPG_DATA_DIR=str(args.data_dir), MEDPG_MODEL_PROFILE="minilm", MEDPGTEST_SETTINGS_FILE="")
    os.environ.update({k: v for k, v in env.items() if k.startswith("MEDPG")})
    args.data_dir.mkdir(parents=True, exist_ok=True)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    prepare(env)
    subprocess.run([sys.executable, "-m", "medpg.cli", "db", "start"], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    from medpg import keys
    from medpg.config import load_settings
    from medpg.db import Database

    db = Database(load_settings())
    with db.connect() as conn:
        conn.execute("DELETE FROM medpg.documents WHERE source = 'load'")
        conn.commit()
    _, token = keys.create_key(db, name="load benchmark", tenant="default", patients=None,
                               scopes=["system/DocumentReference.cruds"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = args.data_dir / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "medpg.cli", "serve", "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"medpg serve did not become healthy; see {log}")
        qs = queries()
        direct, api, inside = overhead(url, token, qs, args.overhead_runs)
        kinds, acknowledged, wall = asyncio.run(load(url, token, args.clients, args.seconds, qs))
    finally:
        server.terminate()
        server.wait(timeout=30)

    with db.connect() as conn:
        stored = {r[0] for r in conn.execute(
            "SELECT external_id FROM medpg.documents WHERE source = 'load'").fetchall()}
        audit_rows = conn.execute("SELECT count(*) FROM medpg.audit_log").fetchone()
        conn.rollback()
    lost = [i for i in acknowledged if i not in stored]
    db.dispose()
    subprocess.run([sys.executable, "-m", "medpg.cli", "db", "stop"], env=env, stdout=subprocess.DEVNULL)

    total = sum(len(k.latencies) for k in kinds.values())
    errors = sum(sum(k.errors.values()) for k in kinds.values())
    lines = [
        "# `medpg serve` under load, and the API's overhead",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "embedded PostgreSQL 18 + pgvector on the same machine; all-MiniLM-L6-v2 on the CPU (`minilm` profile); "
        "the NFCorpus sample (600 abstracts) plus what the run upserts. Server and clients share the 2 cores.",
        "",
        f"## Load: {args.clients} clients for {args.seconds:.0f} s "
        "(80% hybrid search k=10, 20% upserts of 5 documents)",
        "",
        "| kind | requests | per second | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, k in kinds.items():
        lines.append(
            f"| {name} | {len(k.latencies)} | {len(k.latencies) / wall:.1f} | {pct(k.latencies, 50):.1f} | "
            f"{pct(k.latencies, 95):.1f} | {pct(k.latencies, 99):.1f} | "
            f"{sum(k.errors.values())}{' ' + str(k.errors) if k.errors else ''} |"
        )
    lines += [
        f"| all | {total} | {total / wall:.1f} | | | | {errors} |",
        "",
        f"Acknowledged upserts: {len(acknowledged)} documents; found in the database afterwards: "
        f"{len(acknowledged) - len(lost)}; lost: **{len(lost)}**. Audit rows in the database: "
        f"{audit_rows[0] if audit_rows else 0}.",
        "",
        f"## Overhead: {args.overhead_runs} hybrid queries, direct `medpg.search()` and `POST /search` "
        "interleaved (one at a time; the benchmark itself adds no other load)",
        "",
        f"Load average at the start: {load_before}.",
        "",
        "| path | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| `medpg.search()` in process (scope, no audit) | {statistics.median(direct):.2f} | {pct(direct, 95):.2f} |",
        f"| `POST /search` (key check, scope, audit row, JSON) | {statistics.median(api):.2f} | {pct(api, 95):.2f} |",
        f"| the service's own `medpg.search()` time (`timings_ms.total`) | {statistics.median(inside):.2f} | "
        f"{pct(inside, 95):.2f} |",
        "",
        f"API overhead, difference of medians (API − direct): "
        f"**{statistics.median(api) - statistics.median(direct):.2f} ms**; median of the per-request "
        f"differences: {statistics.median(a - d for a, d in zip(api, direct, strict=True)):.2f} ms; "
        f"median of what each request spent outside `medpg.search()` in the service (client time − "
        f"`timings_ms.total`: HTTP, key check, audit row, JSON): "
        f"**{statistics.median(a - x for a, x in zip(api, inside, strict=True)):.2f} ms**.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
