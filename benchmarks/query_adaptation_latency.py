"""What does applying the active query adaptation add to a search?

Measured on the configured database (an NFCorpus database with an active adaptation, after
``medpg learn``), on one connection, over the test queries' raw MiniLM vectors:

  1. the lookup every search makes: ``SELECT ... FROM medpg.active_query_adaptation()``;
  2. the lookup plus the Python adaptation (``medpg.learning.active.lookup`` + ``apply``; the
     parameters are cached per process, so this is the steady state of a running service);
  3. ``medpg.adapt_query_embedding(v)`` in SQL (for SQL applications);
  4. the default ``medpg.hybrid_search`` call with the adapted vector, for scale.

Each runs every query ``--rounds`` times after 10 warm-up calls; p50/p95 over all calls.

    MEDPG_DATA_DIR=/tmp/medpg-nfc MEDPG_MODEL_PROFILE=minilm python benchmarks/query_adaptation_latency.py \
        ../shared/data/nfcorpus
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpg.config import get_settings
from medpg.encoders import load_query_encoder
from medpg.evaluation import load_beir
from medpg.learning.active import lookup
from medpg.retrieval import sql
from medpg.retrieval.pipeline import search_params
from medpg.retrieval.types import Filters
from medpg.stored_model import open_database

RESULT = Path(__file__).resolve().parent / "results" / "query_adaptation_latency.md"


def _timed(call: Callable[[Any], object], items: list[Any], rounds: int) -> list[float]:
    for item in items[:10]:
        call(item)
    out = []
    for _ in range(rounds):
        for item in items:
            t0 = time.perf_counter()
            call(item)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    db = open_database(get_settings(), strict=True)
    settings = db.settings
    data = load_beir(args.dataset, "test")
    texts = [data.queries[q] for q in sorted(data.queries)]
    encoder = load_query_encoder(settings)
    vectors = list(encoder.encode_queries(texts))
    rows: list[tuple[str, list[float]]] = []
    with db.connect() as conn:
        active = lookup(conn, db, encoder.model_name)
        if active is None:
            raise SystemExit("no query adaptation is active: run `medpg learn` first")
        rows.append(
            (
                "lookup: SELECT FROM medpg.active_query_adaptation()",
                _timed(
                    lambda _v: conn.execute(
                        "SELECT id, created_at, query_model, dense_weight, "
                        "lexical_weight FROM medpg.active_query_adaptation()"
                    ).fetchone(),
                    vectors,
                    args.rounds,
                ),
            )
        )
        rows.append(
            (
                "lookup + Python apply (cached parameters)",
                _timed(
                    lambda v: lookup(conn, db, encoder.model_name).apply(v),  # type: ignore[union-attr]
                    vectors,
                    args.rounds,
                ),
            )
        )
        rows.append(
            (
                "SQL medpg.adapt_query_embedding(v)",
                _timed(
                    lambda v: conn.execute("SELECT medpg.adapt_query_embedding(%s)", (v,)).fetchone(),
                    vectors,
                    args.rounds,
                ),
            )
        )
        params = search_params(
            settings,
            k=10,
            mode="hybrid",
            lexical=settings.lexical_scorer,
            fusion=settings.fusion,
            weights=(active.dense_weight, active.lexical_weight),
        )
        pairs = list(zip(texts, active.apply(np.stack(vectors)), strict=True))
        rows.append(
            (
                "default medpg.hybrid_search, top 10 (for scale)",
                _timed(lambda p: sql.hybrid_search(conn, p[0], p[1], params, Filters()), pairs, 1),
            )
        )
        conn.rollback()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Applying the active query adaptation: what it adds to a search",
        "",
        f"- Command: `python benchmarks/query_adaptation_latency.py {args.dataset} --rounds {args.rounds}` "
        f"(MEDPG_DATA_DIR={settings.data_dir}, profile {settings.model_profile})",
        f"- Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; load average {load} at the end",
        f"- Adaptation {active.id} ({active.adapter.dimension}x{active.adapter.dimension}), "
        f"{len(vectors)} NFCorpus test queries x {args.rounds} rounds, one connection, after 10 warm-up calls",
        "",
        "| step | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *(f"| {name} | {np.percentile(t, 50):.3f} | {np.percentile(t, 95):.3f} |" for name, t in rows),
        "",
    ]
    RESULT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
