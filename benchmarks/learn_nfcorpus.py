"""Does a query adaptation learned by ``medpg learn`` rank NFCorpus test better, query by query?

The default hybrid search (``medpg.hybrid_search`` with the settings' defaults) runs every test
query twice on one database: with the raw query vectors and the default fusion weights, and with
the vectors adapted by one stored adaptation and its learned weights, exactly as search applies
them. Nothing in the database changes (the adaptation's parameters are read, not activated), so
this can run next to other work on the same database. The paired test and the wins/ties/losses
are medpg eval's (``medpg.significance``: two-sided paired t-test from ranx).

    MEDPG_DATA_DIR=/tmp/medpg-nfc MEDPG_MODEL_PROFILE=minilm python benchmarks/learn_nfcorpus.py \
        ../shared/data/nfcorpus --adaptation 1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medpg.access import Scope
from medpg.config import get_settings
from medpg.encoders import load_query_encoder
from medpg.evaluation import load_beir
from medpg.learning import store
from medpg.learning.heldout import HeldOut, ndcg10
from medpg.learning.judgments import Judgments
from medpg.retrieval.types import Filters
from medpg.significance import compare_with_baseline
from medpg.stored_model import open_database

RESULT = Path(__file__).resolve().parent / "results" / "learn_nfcorpus_paired.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--adaptation", type=int, required=True)
    parser.add_argument("--splits", default="test,dev")
    args = parser.parse_args()
    db = open_database(get_settings(), strict=True)
    settings = db.settings
    with db.connect() as conn:
        adaptation = store.get_adaptation(conn, args.adaptation)
        adapter = store.load_adapter(conn, args.adaptation)
        ids = dict(conn.execute("SELECT id::text, external_id FROM medpg.documents").fetchall())
        conn.rollback()
    encoder = load_query_encoder(settings)
    lines = [
        f"# medpg learn on NFCorpus: adaptation {adaptation.id} against none, query by query",
        "",
        f"- Command: `python benchmarks/learn_nfcorpus.py {args.dataset} --adaptation {args.adaptation}` "
        f"(MEDPG_DATA_DIR={settings.data_dir}, profile {settings.model_profile})",
        f"- Adaptation {adaptation.id}: trained on {adaptation.trained_on.get('dataset')} "
        f"{adaptation.trained_on.get('split')} ({adaptation.trained_on.get('train_queries')} queries), held out "
        f"{adaptation.trained_on.get('heldout')}; fusion weights dense {adaptation.dense_weight:g} / lexical "
        f"{adaptation.lexical_weight:g}",
        f"- Search: the default hybrid (fusion {settings.fusion}, feedback {settings.feedback}, "
        f"candidates {settings.candidates}); without the adaptation, weights "
        f"{settings.dense_weight:g}/{settings.lexical_weight:g}",
        "- Test: two-sided paired Student's t-test over the split's queries (ranx.compare); W/T/L: queries "
        "where the adapted search's nDCG@10 is higher / equal / lower",
        "",
        "| split | queries | nDCG@10 without | nDCG@10 with | Δ | p | W/T/L |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in args.splits.split(","):
        data = load_beir(args.dataset, split)
        qids = sorted(data.queries)
        judged = Judgments({q: data.queries[q] for q in qids}, {q: {1: 1} for q in qids})
        vectors = encoder.encode_queries([data.queries[q] for q in qids])
        held = HeldOut(db, settings, judged, vectors, Scope("default"), Filters())
        base = _external(
            held.rankings(None, mode="hybrid", weights=(settings.dense_weight, settings.lexical_weight)), ids
        )
        adapted = _external(
            held.rankings(
                adapter, mode="hybrid", weights=(adaptation.dense_weight, adaptation.lexical_weight)
            ),
            ids,
        )
        qrels = {q: data.qrels[q] for q in qids}
        cmp = compare_with_baseline(qrels, {"none": base, "adapted": adapted}, "none", metrics=("ndcg@10",))
        c = cmp["adapted"]["ndcg@10"]
        p = "n/a" if c.p_value is None else ("<0.0001" if c.p_value < 1e-4 else f"{c.p_value:.4f}")
        lines.append(
            f"| {split} | {len(qids)} | {ndcg10(qrels, base):.4f} | {ndcg10(qrels, adapted):.4f} | "
            f"{c.delta:+.4f} | {p} | {c.wins}/{c.ties}/{c.losses} |"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += ["", f"Load average {load} when the run ended.", ""]
    RESULT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def _external(run: dict[str, dict[str, float]], ids: dict[str, str]) -> dict[str, dict[str, float]]:
    """medpg document ids -> the data set's ids, which the qrels use."""
    return {q: {ids[d]: s for d, s in docs.items()} for q, docs in run.items()}


if __name__ == "__main__":
    main()
