"""`medpg learn` on the embedded PostgreSQL with the packaged MiniLM and torch on the CPU.

The collection is built so that learning has something real to learn: 16 medical topics with six
abstracts each, and queries that name a topic only by a code word (``vorlith findings``) that
MiniLM does not connect to the topic's text. Before learning, dense retrieval ranks the code
words' neighbours at random; an adapter trained on some queries must map each code word to its
topic for the held-out queries to rise. No judgment or query text is made up at random: every
figure below is recomputed through ``medpg.search()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from pgvector.psycopg import register_vector
from typer.testing import CliRunner

import medpg
from medpg import keys
from medpg.config import Settings, get_settings
from medpg.db import Database
from medpg.embedding.embedder import Embedder
from medpg.encoders import load_query_encoder
from medpg.ingest import ingest_file
from medpg.learning import judgments, store
from medpg.learning.active import clear_cache, lookup
from medpg.learning.heldout import ndcg10
from medpg.learning.learn import LearnReport, learn
from medpg.learning.train import TrainConfig
from medpg.retrieval.types import Filters

pytestmark = pytest.mark.integration

SOURCE = "codes"

TOPICS = [
    ("asthma", "inhaled corticosteroids", "wheezing and breathlessness at night"),
    ("type 2 diabetes", "metformin", "raised fasting glucose and HbA1c"),
    ("atrial fibrillation", "oral anticoagulants", "an irregular pulse and palpitations"),
    ("migraine", "triptans", "throbbing unilateral headache with aura"),
    ("osteoporosis", "bisphosphonates", "low bone mineral density and fragility fractures"),
    ("hypothyroidism", "levothyroxine", "fatigue, weight gain and a raised TSH"),
    ("rheumatoid arthritis", "methotrexate", "symmetric swollen finger joints"),
    ("peptic ulcer", "proton pump inhibitors", "epigastric pain and Helicobacter pylori"),
    ("chronic kidney disease", "ACE inhibitors", "falling eGFR and albuminuria"),
    ("depression", "SSRIs", "low mood, anhedonia and poor sleep"),
    ("psoriasis", "topical vitamin D analogues", "scaly red plaques on the elbows"),
    ("gout", "allopurinol", "an acutely inflamed big toe and high urate"),
    ("glaucoma", "prostaglandin eye drops", "raised intraocular pressure and field loss"),
    ("iron deficiency anaemia", "oral iron", "microcytic red cells and low ferritin"),
    ("heart failure", "beta blockers", "ankle oedema and a reduced ejection fraction"),
    ("epilepsy", "levetiracetam", "recurrent generalised tonic-clonic seizures"),
]
CODES = [
    "vorlith",
    "quenbar",
    "zaptrix",
    "mulderon",
    "fensquat",
    "trivok",
    "palumbex",
    "grindaw",
    "sobrake",
    "yentil",
    "claxomur",
    "drevish",
    "ombrizel",
    "kaltrup",
    "wexadine",
    "brumqua",
]
FILLERS = ["findings", "report", "overview", "case notes", "question", "summary", "update", "review"]
TEMPLATES = [
    "{t}: a randomised trial of {d}. Patients presented with {s}; {d} improved outcomes at one year.",
    "Long-term management of {t}. We review {d} and monitoring of {s} in primary care.",
    "Cohort study of {t} in older adults: {s} predicted admission; treatment with {d} was common.",
    "Guideline update for {t}. First-line {d}; assess {s} at every visit.",
    "Costs of {t} care. Prescribing of {d} rose while {s} remained the main reason to consult.",
    "Case series: {t} with {s}. Response to {d} was documented in most patients.",
]


def _corpus() -> list[dict[str, str]]:
    return [
        {
            "_id": f"d{t}-{j}",
            "title": f"{topic.capitalize()} study {j}",
            "text": tpl.format(t=topic, d=drug, s=sign),
        }
        for t, (topic, drug, sign) in enumerate(TOPICS)
        for j, tpl in enumerate(TEMPLATES)
    ]


def _queries() -> dict[str, str]:
    return {
        f"q{t}-{f}": f"{CODES[t]} {filler}" for t in range(len(TOPICS)) for f, filler in enumerate(FILLERS)
    }


def _qrels(qids: list[str], topic_of: Callable[[str], int]) -> list[tuple[str, str, int]]:
    return [(q, f"d{topic_of(q)}-{j}", 2 if j < 2 else 1) for q in qids for j in range(len(TEMPLATES))]


def _topic(qid: str) -> int:
    return int(qid[1:].split("-")[0])


def _write_dataset(root: Path) -> Path:
    """A BEIR directory: ``all`` (every query), ``train`` / ``dev`` (fillers 0-5 / 6-7) and
    ``shuffled`` (train queries judged against the wrong topics)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_bytes(b"\n".join(orjson.dumps(d) for d in _corpus()) + b"\n")
    queries = _queries()
    (root / "queries.jsonl").write_bytes(
        b"\n".join(orjson.dumps({"_id": q, "text": t}) for q, t in queries.items()) + b"\n"
    )
    qrels = root / "qrels"
    qrels.mkdir(exist_ok=True)
    every = sorted(queries)
    train = [q for q in every if int(q.split("-")[1]) < 6]
    dev = [q for q in every if int(q.split("-")[1]) >= 6]
    splits = {
        "all": _qrels(every, _topic),
        "train": _qrels(train, _topic),
        "dev": _qrels(dev, _topic),
        "shuffled": _qrels(train, lambda q: (_topic(q) * 5 + 3) % len(TOPICS)),
    }
    for name, rows in splits.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{g}" for q, d, g in rows)]
        (qrels / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("learn") / SOURCE)


@pytest.fixture(scope="module")
def learn_db(migrated_db: Callable[..., Database], dataset: Path) -> Iterator[Database]:
    """The collection ingested and embedded with the packaged MiniLM (96 documents)."""
    db = migrated_db("learn")
    ingest_file(db, db.settings, dataset / "corpus.jsonl", source=SOURCE)
    Embedder(db, db.settings).embed_pending()
    clear_cache()
    yield db
    db.dispose()


@pytest.fixture
def fresh(learn_db: Database) -> Database:
    """The database with no adaptation active (each test starts from the raw encoder)."""
    _deactivate_all(learn_db)
    return learn_db


FAST = TrainConfig(max_epochs=30, patience=3, learning_rate=3e-3, batch_size=16)


def _learn(db: Database, dataset: Path, split: str, dev: str | None, **kwargs: Any) -> LearnReport:
    found = judgments.from_beir(
        db, dataset, split=split, dev_split=dev, source=SOURCE, tenant=None, max_query_chars=1000
    )
    return learn(
        db,
        db.settings,
        train=found.train,
        heldout=found.heldout,
        trained_on=found.trained_on,
        filters=Filters(sources=(SOURCE,)),
        config=kwargs.pop("config", FAST),
        **kwargs,
    )


@dataclass(frozen=True)
class Hashed:
    """An adaptation trained on 80% of the queries (hash split), and the held-out 20% before it."""

    report: LearnReport
    found: judgments.BeirJudgments
    qrels: dict[str, dict[str, int]]
    before: float


@pytest.fixture(scope="module")
def hashed(learn_db: Database, dataset: Path) -> Hashed:
    _deactivate_all(learn_db)
    found = judgments.from_beir(
        learn_db, dataset, split="all", dev_split=None, source=SOURCE, tenant=None, max_query_chars=1000
    )
    qrels = _external_qrels(found.heldout.qrels, learn_db)
    before = _search_ndcg(learn_db, found.heldout.queries, qrels)
    report = _learn(learn_db, dataset, "all", None)
    _deactivate_all(learn_db)
    return Hashed(report, found, qrels, before)


@pytest.fixture(scope="module")
def good(learn_db: Database, dataset: Path) -> LearnReport:
    """An adaptation trained on the train split, the dev split held out (stored, then deactivated)."""
    _deactivate_all(learn_db)
    report = _learn(learn_db, dataset, "train", "dev")
    assert report.activated
    _deactivate_all(learn_db)
    return report


def _deactivate_all(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("UPDATE medpg.query_adaptations SET active = false WHERE active")
        conn.commit()


def _search_ndcg(db: Database, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> float:
    """nDCG@10 of the default hybrid search through ``medpg.search()`` (adapter applied by search)."""
    run = {}
    for qid, text in queries.items():
        results = medpg.search(text, k=10, db=db, settings=db.settings, rerank=False).results
        run[qid] = {r.external_id: float(10 - r.rank) for r in results}
    return ndcg10(qrels, run)


def _external_qrels(split_qrels: dict[str, dict[int, int]], db: Database) -> dict[str, dict[str, int]]:
    with db.connect() as conn:
        names = dict(conn.execute("SELECT id, external_id FROM medpg.documents").fetchall())
        conn.rollback()
    return {q: {names[d]: g for d, g in docs.items() if g > 0} for q, docs in split_qrels.items()}


def _rankings(db: Database, texts: list[str]) -> list[list[tuple[int, float]]]:
    return [
        [
            (r.document_id, r.score)
            for r in medpg.search(t, k=10, db=db, settings=db.settings, rerank=False).results
        ]
        for t in texts
    ]


# --------------------------------------------------------------------------------------------------
# learning


def test_learning_improves_ranking_on_the_held_out_queries(hashed: Hashed, fresh: Database) -> None:
    """Trained on 80% of the queries (hash split), the held-out 20% rank their topic's documents."""
    report, found = hashed.report, hashed.found
    held = found.heldout
    assert 15 <= len(held) <= 45 and not set(held.ids) & set(found.train.ids)
    assert report.activated and not report.forced and report.baseline_id is None
    assert _search_ndcg(fresh, held.queries, hashed.qrels) == pytest.approx(hashed.before, abs=1e-9)

    store.activate(fresh, report.adaptation_id)
    after = _search_ndcg(fresh, held.queries, hashed.qrels)
    assert after >= hashed.before + 0.3, (hashed.before, after)
    # the guard's figures are those of the same search, on the same queries
    assert report.baseline_ndcg10 == pytest.approx(hashed.before, abs=1e-6)
    assert report.heldout_ndcg10 == pytest.approx(after, abs=1e-6)
    assert report.dense_after > report.dense_before + 0.3
    stored = next(a for a in store.list_adaptations(fresh) if a.id == report.adaptation_id)
    assert stored.active and stored.tenant is None and stored.baseline_id is None
    assert stored.trained_on["source"] == "qrels" and stored.trained_on["heldout"] == "hash 20%"
    assert stored.trained_on["train_queries"] == len(found.train)
    assert (stored.dense_weight, stored.lexical_weight) == (report.dense_weight, report.lexical_weight)
    assert stored.query_model == load_query_encoder(fresh.settings).model_name
    assert stored.article_model.startswith("all-MiniLM-L6-v2@")


def test_the_guard_refuses_a_worse_adaptation_and_shows_both_figures(
    fresh: Database, good: LearnReport, dataset: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store.activate(fresh, good.adaptation_id)

    runner = _cli(fresh, monkeypatch, tmp_path)
    from medpg.cli import app

    out = runner.invoke(
        app,
        [
            "learn",
            str(dataset),
            "--split",
            "shuffled",
            "--dev-split",
            "dev",
            "--source",
            SOURCE,
            "--max-epochs",
            "30",
            "--patience",
            "5",
            "--learning-rate",
            "3e-3",
            "--batch-size",
            "16",
        ],
    )
    assert out.exit_code == 1, out.output
    refused = store.list_adaptations(fresh)[0]
    assert refused.id != good.adaptation_id and not refused.active
    assert refused.heldout_ndcg10 < refused.baseline_ndcg10 and refused.baseline_id == good.adaptation_id
    text = " ".join(out.output.split())
    assert "refused:" in text
    assert f"{refused.heldout_ndcg10:.4f}" in text and f"{refused.baseline_ndcg10:.4f}" in text
    assert f"adaptation {good.adaptation_id}" in text
    with fresh.connect() as conn:
        assert store.active_id(conn, None) == good.adaptation_id
        conn.rollback()

    # activating it by hand needs --force too, and says it was forced
    out = runner.invoke(app, ["learn", "activate", str(refused.id)])
    assert out.exit_code == 4 and "--force" in out.output
    out = runner.invoke(app, ["learn", "activate", str(refused.id), "--force"])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(app, ["learn", "list"])
    assert "yes (forced)" in listed.output
    out = runner.invoke(app, ["learn", "rollback"])
    assert out.exit_code == 0 and f"adaptation {refused.id} -> adaptation {good.adaptation_id}" in out.output


def test_switching_back_restores_the_previous_rankings_exactly(
    fresh: Database, good: LearnReport, hashed: Hashed
) -> None:
    texts = list(_queries().values())[::9]
    before = _rankings(fresh, texts)
    first, second = good, hashed.report
    store.activate(fresh, first.adaptation_id)
    with_first = _rankings(fresh, texts)
    assert with_first != before
    store.activate(fresh, second.adaptation_id)
    with_second = _rankings(fresh, texts)
    assert with_second not in (before, with_first)

    assert store.rollback(fresh).after == first.adaptation_id
    assert _rankings(fresh, texts) == with_first
    assert store.rollback(fresh).after is None
    assert _rankings(fresh, texts) == before
    store.activate(fresh, second.adaptation_id)
    assert _rankings(fresh, texts) == with_second
    store.deactivate(fresh)
    assert _rankings(fresh, texts) == before
    with pytest.raises(medpg.errors.InputError, match="nothing to roll back"):
        store.rollback(fresh)


def test_search_uses_the_learned_fusion_weights_unless_the_user_set_them(
    fresh: Database, good: LearnReport
) -> None:
    report = good
    store.activate(fresh, report.adaptation_id)
    with fresh.connect() as conn:
        active = lookup(conn, fresh)
        conn.rollback()
    assert active is not None and active.id == report.adaptation_id
    from medpg.learning.active import fusion_weights

    assert fusion_weights(fresh.settings, active) == (report.dense_weight, report.lexical_weight)
    chosen = fresh.settings.with_changes(dense_weight=0.25, lexical_weight=0.75)
    assert fusion_weights(chosen, active) == (0.25, 0.75)


# --------------------------------------------------------------------------------------------------
# SQL clients


def test_the_sql_function_adapts_a_raw_vector_as_python_does(fresh: Database, good: LearnReport) -> None:
    encoder = load_query_encoder(fresh.settings)
    raw = encoder.encode_queries(list(_queries().values())[:12])
    url = str(fresh.settings.database_url)

    def sql_adapt(vectors: np.ndarray, role: str | None = None, **args: str) -> np.ndarray:
        with psycopg.connect(url) as conn:
            register_vector(conn)
            if role:
                conn.execute(f"SET ROLE {role}")
            extra = ", query_model => %(model)s" if args else ""
            out = [
                conn.execute(
                    f"SELECT medpg.adapt_query_embedding(%(v)s{extra})", {"v": v, **args}
                ).fetchone()[0]
                for v in vectors
            ]
        return np.stack([np.asarray(o.to_numpy()) for o in out])

    # nothing active: the identity
    assert np.array_equal(sql_adapt(raw), raw.astype(np.float32))
    report = good
    store.activate(fresh, report.adaptation_id)
    with fresh.connect() as conn:
        active = lookup(conn, fresh, encoder.model_name)
        conn.rollback()
    assert active is not None and active.id == report.adaptation_id
    python = active.apply(raw)
    assert np.abs(sql_adapt(raw) - python).max() < 1e-5
    assert not np.allclose(python, raw, atol=1e-3)
    assert np.abs(sql_adapt(raw, model=encoder.model_name) - python).max() < 1e-5
    assert np.array_equal(sql_adapt(raw, model="another-encoder@0"), raw.astype(np.float32))

    # a SQL application's role gets the same vector; hybrid_search with it and the learned weights
    # ranks as medpg.search() does
    medpg.access.create_sql_role(fresh, "learn_app", medpg.access.Scope("default"))
    assert np.abs(sql_adapt(raw, role="learn_app") - python).max() < 1e-5
    text = list(_queries().values())[3]
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute("SET ROLE learn_app")
        rows = conn.execute(
            "SELECT document_id FROM medpg.hybrid_search(%s, medpg.adapt_query_embedding(%s), k => 10, "
            "dense_weight => %s, lexical_weight => %s)",
            (text, raw[3], report.dense_weight, report.lexical_weight),
        ).fetchall()
    via_python = medpg.search(text, k=10, db=fresh, settings=fresh.settings, rerank=False).results
    assert [r[0] for r in rows] == [r.document_id for r in via_python]


def test_a_tenants_own_adaptation_wins_over_the_one_for_every_tenant(
    fresh: Database, good: LearnReport
) -> None:
    every = good
    store.activate(fresh, every.adaptation_id)
    with fresh.connect() as conn:  # the same parameters for one tenant, with other weights
        conn.execute(
            "INSERT INTO medpg.query_adaptations (tenant_id, kind, query_model, article_model, dimension, weight, "
            "dense_weight, lexical_weight, trained_on, training, heldout_ndcg10, baseline_ndcg10) "
            "SELECT 'clinic-b', kind, query_model, article_model, dimension, weight, 0.3, 0.7, trained_on, training, "
            "heldout_ndcg10, baseline_ndcg10 FROM medpg.query_adaptations WHERE id = %s RETURNING id",
            (every.adaptation_id,),
        )
        conn.commit()
    own = store.list_adaptations(fresh, tenant="clinic-b", every_tenant=False)[0]
    store.activate(fresh, own.id)

    def active_for(tenant: str) -> tuple[int, float] | None:
        with fresh.connect() as conn:
            medpg.access.Scope(tenant).apply(conn)
            found = lookup(conn, fresh)
            conn.rollback()
        return None if found is None else (found.id, found.dense_weight)

    assert active_for("clinic-b") == (own.id, 0.3)
    assert active_for("default") == (every.adaptation_id, every.dense_weight)
    with fresh.connect() as conn:  # the owner (the CLI) has no tenant: the one for every tenant
        assert lookup(conn, fresh).id == every.adaptation_id  # type: ignore[union-attr]
        conn.rollback()
    store.deactivate(fresh)
    assert active_for("default") is None and active_for("clinic-b") == (own.id, 0.3)
    store.deactivate(fresh, "clinic-b")


# --------------------------------------------------------------------------------------------------
# feedback


def _cli(db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("MEDPG_DATABASE_URL", str(db.settings.database_url))
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    monkeypatch.setenv("MEDPG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDPG_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    return CliRunner()


def _feedback_rows(db: Database) -> int:
    with db.connect() as conn:
        n = conn.execute("SELECT count(*) FROM medpg.feedback").fetchone()[0]
        conn.rollback()
    return int(n)


@pytest.fixture
def api(learn_db: Database) -> Iterator[TestClient]:
    settings = learn_db.settings.with_changes(max_query_chars=200)
    with TestClient(create_app_for(settings)) as client:
        yield client


def create_app_for(settings: Settings) -> Any:
    from medpg.service.app import create_app

    return create_app(settings, warm_models=False)


def test_feedback_is_validated_and_nothing_bad_is_written(
    api: TestClient, learn_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = keys.create_key(
        learn_db, name="fb", tenant="default", patients=None, scopes=["user/DocumentReference.rs"]
    )
    _, reader = keys.create_key(
        learn_db, name="fb-r", tenant="default", patients=None, scopes=["user/DocumentReference.r"]
    )
    _, patient = keys.create_key(
        learn_db, name="fb-p", tenant="default", patients=["p-1"], scopes=["patient/DocumentReference.rs"]
    )
    _, other = keys.create_key(
        learn_db, name="fb-o", tenant="elsewhere", patients=None, scopes=["user/DocumentReference.rs"]
    )
    headers = {"Authorization": f"Bearer {token}"}
    good = {"query": "zebracorn vorlith findings", "grade": 2, "document": {"source": SOURCE, "id": "d0-1"}}
    before = _feedback_rows(learn_db)

    def refused(
        body: dict[str, Any], status: int, field: str | None = None, *, h: dict[str, str] = headers
    ) -> None:
        out = api.post("/feedback", json=body, headers=h)
        assert out.status_code == status, out.text
        error = out.json()["error"]
        if field is not None:
            assert field in error["message"], error
        assert "zebracorn" not in out.text

    refused({**good, "grade": 4}, 422, "grade")
    refused({**good, "grade": -1}, 422, "grade")
    refused({**good, "grade": "2"}, 422, "grade")
    refused({**good, "grade": True}, 422, "grade")
    refused({**good, "kind": "liked"}, 422, "kind")
    refused({**good, "query": ""}, 422, "query")
    refused({**good, "query": "   "}, 422, "query")
    refused({**good, "query": "a\x00b"}, 422, "query")
    refused({**good, "query": "x" * 201}, 422, "query")
    refused({k: v for k, v in good.items() if k != "document"}, 422, "document")
    refused({**good, "document_id": 1}, 422, "document")
    refused({**good, "document": {"source": SOURCE}}, 422, "document.id")
    refused({**good, "extra": 1}, 422, "extra")
    refused({**good, "document": {"source": SOURCE, "id": "no-such"}}, 404)
    refused({**{k: v for k, v in good.items() if k != "document"}, "document_id": 2**40}, 404)
    # documents the key cannot see: another tenant's key, a key bound to another patient
    refused(good, 404, h={"Authorization": f"Bearer {other}"})
    refused(good, 404, h={"Authorization": f"Bearer {patient}"})
    refused(good, 403, h={"Authorization": f"Bearer {reader}"})  # no search scope
    assert _feedback_rows(learn_db) == before

    with caplog.at_level("DEBUG"):
        out = api.post("/feedback", json=good, headers=headers)
    assert out.status_code == 201, out.text
    assert out.json()["recorded"] and out.json()["grade"] == 2 and out.json()["kind"] == "marked"
    assert "zebracorn" not in caplog.text
    by_id = api.post(
        "/feedback",
        json={
            "query": "vorlith findings",
            "grade": 0,
            "kind": "opened",
            "document_id": out.json()["document_id"] + 7,
        },
        headers=headers,
    )
    assert by_id.status_code == 201, by_id.text
    assert _feedback_rows(learn_db) == before + 2
    with learn_db.connect() as conn:  # the API role may write feedback but not read it
        medpg.access.Scope("default").apply(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM medpg.feedback")
        conn.rollback()
    with learn_db.connect() as conn:
        conn.execute("DELETE FROM medpg.feedback")
        conn.commit()


def test_recorded_feedback_feeds_medpg_learn(
    api: TestClient, fresh: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Users mark results through the API; `medpg learn --feedback` learns from those rows."""
    _, token = keys.create_key(
        fresh, name="marks", tenant="default", patients=None, scopes=["user/DocumentReference.rs"]
    )
    headers = {"Authorization": f"Bearer {token}"}
    for qid, text in _queries().items():
        for j in range(3):
            body = {
                "query": text,
                "grade": 3 - j,
                "document": {"source": SOURCE, "id": f"d{_topic(qid)}-{j}"},
            }
            assert api.post("/feedback", json=body, headers=headers).status_code == 201
        opened = {
            "query": f"  {text} ",
            "grade": 1,
            "kind": "opened",
            "document": {"source": SOURCE, "id": f"d{_topic(qid)}-4"},
        }
        assert api.post("/feedback", json=opened, headers=headers).status_code == 201

    train, heldout, trained_on = judgments.from_feedback(fresh, tenant=None, max_query_chars=1000)
    assert trained_on["feedback_rows"] == 4 * len(_queries())
    assert len(train) + len(heldout) == len(_queries())  # whitespace variants are one query
    assert all(len(docs) == 4 for docs in train.qrels.values())

    runner = _cli(fresh, monkeypatch, tmp_path)
    from medpg.cli import app

    out = runner.invoke(
        app,
        [
            "learn",
            "--feedback",
            "--max-epochs",
            "60",
            "--patience",
            "8",
            "--learning-rate",
            "3e-3",
            "--batch-size",
            "16",
        ],
    )
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "active: adaptation" in text
    gain = re.search(r"search (\d\.\d+) with it, (\d\.\d+) with no adaptation", text)
    assert gain is not None and float(gain.group(1)) > float(gain.group(2)) + 0.2, text
    assert "vorlith" not in out.output
    stored = store.list_adaptations(fresh)[0]
    assert stored.active and stored.trained_on["source"] == "feedback"
    with fresh.connect() as conn:
        conn.execute("DELETE FROM medpg.feedback")
        conn.commit()
