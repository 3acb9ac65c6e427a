"""BM25 in PostgreSQL: postings and statistics kept by triggers, scores against a reference computation."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medpg.db import Database
from medpg.ingest import ingest_file
from tests.conftest import truncate

pytestmark = pytest.mark.integration

LONG_BODY = "alpha beta " * 9000 + "omega"  # 18,001 words: positions past 16,383 are clamped in a tsvector
SATURATED_BODY = "zebra " * 300 + "lion " * 5 + "grazing on the savanna"  # 300 > 255 positions

CORPUS = {
    "d1": ("Vitamin D and breast cancer", "Serum vitamin D levels and breast cancer risk in women."),
    "d2": ("Statins", "Statin therapy lowers LDL cholesterol and cardiovascular risk; statins are cheap."),
    "d3": ("", "Breast feeding, infant growth and maternal vitamin intake during pregnancy."),
    "d4": ("Cancer screening", "Colorectal cancer screening with colonoscopy reduces cancer mortality."),
    "d5": ("Zebra", SATURATED_BODY),
    "d6": ("Long", LONG_BODY),
    "d7": ("", "the and of it is was"),
    "d8": ("Coffee, tea & cancer?", "Coffee (and tea) drinkers: a 'cohort' study of liver cancer \\ risk."),
}


def insert_sql(conn: Any, source: str, docs: dict[str, tuple[str, str]]) -> None:
    """Insert documents with plain SQL, as an application writing directly would."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) VALUES (%s, %s, %s, %s, %s)",
            [(source, ext, t, b, hashlib.sha256((t + b).encode()).digest()) for ext, (t, b) in docs.items()],
        )


def reference_counts(conn: Any) -> dict[int, tuple[Counter[str], Counter[str]]]:
    """(all, title) term counts per document, word by word, so no tsvector cap can bite."""
    rows = conn.execute(
        r"""
        SELECT d.id, f.is_title, u.lexeme, sum(cardinality(u.positions))
        FROM medpg.documents d
        CROSS JOIN LATERAL (
            SELECT 1 AS is_title, w FROM regexp_split_to_table(d.title, '\s+') w
            UNION ALL SELECT 0, w FROM regexp_split_to_table(d.body, '\s+') w
        ) f
        CROSS JOIN LATERAL unnest(to_tsvector('english', f.w)) u
        GROUP BY 1, 2, 3
        """
    ).fetchall()
    ids = [r[0] for r in conn.execute("SELECT id FROM medpg.documents").fetchall()]
    out: dict[int, tuple[Counter[str], Counter[str]]] = {i: (Counter(), Counter()) for i in ids}
    for doc, is_title, lexeme, n in rows:
        out[doc][0][lexeme] += n
        if is_title:
            out[doc][1][lexeme] += n
    return out


def reference_bm25(conn: Any, query: str, k1: float, b: float, title_weight: float) -> dict[int, float]:
    counts = reference_counts(conn)
    qtf = dict(
        conn.execute(
            "SELECT lexeme, cardinality(positions) FROM unnest(to_tsvector('english', %s))", (query,)
        ).fetchall()
    )
    n = len(counts)
    tf = {d: {t: a[t] + (title_weight - 1) * ti[t] for t in a} for d, (a, ti) in counts.items()}
    dl = {d: sum(v.values()) for d, v in tf.items()}
    avgdl = sum(dl.values()) / n
    scores: dict[int, float] = {}
    for term, q in qtf.items():
        df = sum(1 for d in tf if tf[d].get(term, 0) > 0)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for d, terms in tf.items():
            f = terms.get(term, 0)
            if f > 0:
                scores[d] = scores.get(d, 0.0) + q * idf * f * (k1 + 1) / (
                    f + k1 * (1 - b + b * dl[d] / avgdl)
                )
    return scores


def snapshot(conn: Any) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    postings = conn.execute(
        "SELECT lexeme, document_id, tf, dl, tf_title, dl_title FROM medpg.lexical_postings ORDER BY 1, 2"
    ).fetchall()
    stats = conn.execute(
        "SELECT coalesce(sum(documents), 0), coalesce(sum(length), 0), coalesce(sum(title_length), 0) "
        "FROM medpg.lexical_stats"
    ).fetchone()
    return postings, tuple(int(x) for x in stats)


def assert_current(conn: Any) -> None:
    """What the triggers maintained equals a rebuild from scratch, and the document count is right."""
    kept = snapshot(conn)
    conn.execute("SELECT medpg.rebuild_lexical_index()")
    rebuilt = snapshot(conn)
    conn.rollback()
    assert kept == rebuilt
    assert kept[1][0] == conn.execute("SELECT count(*) FROM medpg.documents").fetchone()[0]


def run_concurrently(work: Callable[[Any], None], args: list[Any]) -> None:
    """Run ``work(arg)`` for each arg in its own thread; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def guarded(arg: Any) -> None:
        try:
            work(arg)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture()
def corpus(db: Database) -> Iterator[Database]:
    truncate(db)
    with db.connect() as conn:
        insert_sql(conn, "test", CORPUS)
        conn.commit()
    yield db


def _ids(conn: Any) -> dict[str, int]:
    return dict(conn.execute("SELECT external_id, id FROM medpg.documents").fetchall())


@pytest.mark.parametrize(
    ("query", "k1", "b", "title_weight"),
    [
        ("vitamin D and breast cancer", 0.9, 0.4, 1.0),
        ("cancer cancer risk", 2.0, 0.5, 2.0),  # a repeated query term counts twice
        ("zebra lion", 1.2, 0.75, 1.0),
        ("alpha omega statins", 1.5, 0.0, 3.0),
        ("coffee & tea: 'cohort'", 0.5, 1.0, 1.0),
    ],
)
def test_bm25_scores_equal_a_reference(
    corpus: Database, query: str, k1: float, b: float, title_weight: float
) -> None:
    with corpus.connect() as conn:
        expected = reference_bm25(conn, query, k1, b, title_weight)
        got = dict(
            conn.execute(
                "SELECT * FROM medpg.bm25_scores(%s, %s, %s, %s)", (query, k1, b, title_weight)
            ).fetchall()
        )
    assert expected
    assert got.keys() == expected.keys()
    for doc, score in expected.items():
        assert got[doc] == pytest.approx(score, rel=1e-9)


def test_bm25_search_ranks_and_limits(corpus: Database) -> None:
    with corpus.connect() as conn:
        ids = _ids(conn)
        rows = conn.execute("SELECT document_id, rank, score FROM medpg.bm25_search('cancer', 2)").fetchall()
        also = conn.execute(
            "SELECT document_id, rank, score FROM medpg.bm25_search('cancer', 1, also => %s)",
            ([ids["d2"], ids["d4"], ids["d8"]],),
        ).fetchall()
    assert [r[1] for r in rows] == [1, 2]
    assert rows[0][2] >= rows[1][2]
    ranked = [r for r in also if r[1] is not None]
    extra = {r[0]: r[2] for r in also if r[1] is None}
    assert len(ranked) == 1
    assert extra[ids["d2"]] == 0.0  # asked for, matches no term
    assert ranked[0][0] not in extra


def test_postings_are_exact_where_a_tsvector_saturates(corpus: Database) -> None:
    with corpus.connect() as conn:
        ids = _ids(conn)
        stored = dict(
            conn.execute(
                "SELECT u.lexeme, cardinality(u.positions) FROM medpg.documents d, unnest(d.tsv) u WHERE d.id = %s",
                (ids["d5"],),
            ).fetchall()
        )
        assert stored["zebra"] < 301  # capped: 255 per to_tsvector, 256 after concatenation
        tf = dict(
            conn.execute(
                "SELECT lexeme, tf FROM medpg.lexical_postings WHERE document_id = %s", (ids["d5"],)
            ).fetchall()
        )
        assert tf["zebra"] == 301  # 300 in the body + 1 in the title
        assert tf["lion"] == 5
        long_row = conn.execute(
            "SELECT max(dl), max(dl_title) FROM medpg.lexical_postings WHERE document_id = %s", (ids["d6"],)
        ).fetchone()
        assert long_row == (9000 + 9000 + 1 + 1, 1)  # alpha, beta, omega and the title's "long"
        # a document of stopwords only counts as a document with no terms
        assert conn.execute(
            "SELECT count(*) FROM medpg.lexical_postings WHERE document_id = %s", (ids["d7"],)
        ).fetchone() == (0,)
        assert_current(conn)


def test_statistics_follow_updates_deletes_and_truncate(corpus: Database) -> None:
    with corpus.connect() as conn:
        ids = _ids(conn)
        conn.execute("UPDATE medpg.documents SET body = 'zebra crossing' WHERE id = %s", (ids["d1"],))
        conn.execute("UPDATE medpg.documents SET metadata = '{\"a\": 1}' WHERE id = %s", (ids["d2"],))
        conn.execute("UPDATE medpg.documents SET id = id + 100000 WHERE id = %s", (ids["d3"],))
        conn.commit()
        assert conn.execute(
            "SELECT count(*) FROM medpg.lexical_postings WHERE document_id = %s", (ids["d3"],)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM medpg.lexical_postings WHERE document_id = %s AND lexeme = 'serum'",
            (ids["d1"],),
        ).fetchone() == (0,)
        assert_current(conn)
        freq = dict(conn.execute("SELECT * FROM medpg.lexical_document_frequencies").fetchall())
        assert freq["zebra"] == 2  # d1 now, and d5
        corpus = conn.execute("SELECT documents, average_length FROM medpg.lexical_corpus").fetchone()
        assert corpus is not None and corpus[0] == len(CORPUS)
        conn.execute("DELETE FROM medpg.documents WHERE external_id IN ('d5', 'd6')")
        conn.commit()
        assert conn.execute(
            "SELECT count(*) FROM medpg.lexical_postings WHERE document_id IN (%s, %s)",
            (ids["d5"], ids["d6"]),
        ).fetchone() == (0,)
        assert_current(conn)
        insert_sql(conn, "test", {"d9": ("New", "A new zebra document about cancer.")})
        conn.commit()
        assert_current(conn)
        conn.execute("TRUNCATE medpg.documents CASCADE")
        conn.commit()
        assert snapshot(conn) == ([], (0, 0, 0))


def test_ingest_upserts_keep_postings_current(db: Database, tmp_path: Path) -> None:
    truncate(db)
    path = tmp_path / "docs.jsonl"
    docs = [
        {"_id": f"n{i}", "title": f"note {i}", "text": f"patient {i} has hypertension and diabetes"}
        for i in range(30)
    ]
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs))
    ingest_file(db, db.settings, path, source="notes", progress=False)
    docs[3]["text"] = "completely different words: asthma inhaler"
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs[:20]))  # the rest stays as it was
    report = ingest_file(db, db.settings, path, source="notes", progress=False)
    assert report.updated == 1
    with db.connect() as conn:
        terms = {
            r[0]
            for r in conn.execute(
                "SELECT p.lexeme FROM medpg.lexical_postings p JOIN medpg.documents d ON d.id = p.document_id "
                "WHERE d.external_id = 'n3'"
            ).fetchall()
        }
        assert "asthma" in terms and "hypertens" not in terms
        assert_current(conn)


def test_concurrent_writers_keep_exact_statistics(db: Database) -> None:
    truncate(db)

    def write(prefix: str) -> None:
        with db.connect() as conn:
            for batch in range(5):
                insert_sql(
                    conn,
                    prefix,
                    {f"{prefix}{batch}-{i}": ("t", f"shared words cancer {prefix} {i}") for i in range(20)},
                )
                conn.commit()

    run_concurrently(write, ["a", "b", "c"])
    with db.connect() as conn:
        assert snapshot(conn)[1][0] == 300
        assert_current(conn)


def test_large_statements_are_cut_into_blocks(db: Database) -> None:
    truncate(db)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "SELECT 'bulk', 'b' || i, 'title ' || i, 'shared cancer words and number ' || i, '\\x00' "
            "FROM generate_series(1, 2500) i"
        )
        conn.commit()
        sizes = [
            r[0]
            for r in conn.execute(
                "SELECT count(*) FROM medpg.lexical_documents GROUP BY block_id ORDER BY 1 DESC"
            ).fetchall()
        ]
        assert sizes == [1000, 1000, 500]
        # a lexeme every document has: one row per block, arrays in document order
        rows = conn.execute(
            "SELECT document_ids FROM medpg.lexical_blocks WHERE lexeme = 'cancer' ORDER BY block_id"
        ).fetchall()
        assert sorted(len(r[0]) for r in rows) == [500, 1000, 1000]
        assert all(r[0] == sorted(r[0]) for r in rows)
        assert_current(conn)


def test_concurrent_updates_within_one_block_lose_nothing(db: Database) -> None:
    """Writers rewriting the same block rows queue on their row locks instead of overwriting arrays."""
    truncate(db)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "SELECT 'blk', 'u' || i, 'note', 'common cancer therapy words ' || i, '\\x00' "
            "FROM generate_series(1, 40) i"
        )
        conn.commit()
        assert conn.execute("SELECT count(DISTINCT block_id) FROM medpg.lexical_documents").fetchone() == (1,)

    def update(parity: int) -> None:
        with db.connect() as conn:
            for rnd in range(8):
                for i in range(1 + parity, 41, 2):
                    conn.execute(
                        "UPDATE medpg.documents SET body = %s WHERE source = 'blk' AND external_id = %s",
                        (f"common cancer therapy round{rnd} writer{parity} doc{i}", f"u{i}"),
                    )
                    conn.commit()

    run_concurrently(update, [0, 1])
    with db.connect() as conn:
        freq = dict(conn.execute("SELECT * FROM medpg.lexical_document_frequencies").fetchall())
        assert freq["cancer"] == 40 and freq["round7"] == 40
        assert "round0" not in freq
        assert_current(conn)
