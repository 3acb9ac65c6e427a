"""Judgments to learn from: a BEIR qrels file with its queries, or feedback recorded in PostgreSQL.

Either way they become ``Judgments``: query texts by query id, and per query the graded medpg
documents (grade > 0 relevant, 0 judged not relevant). Judged documents are found among those
already stored (``medpg learn`` never ingests or embeds); those not there are counted and left
out. Part of the queries is held out: the dev split when one is given, otherwise a fixed 20%
chosen by a seeded hash of each query id, so that every run holds out the same queries and two
adaptations are compared on the same ones.

Messages name files, lines and counts, never query text.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medpg.access import DEFAULT_TENANT, check_tenant
from medpg.db.engine import Database
from medpg.errors import InputError
from medpg.retrieval.query import prepare_query

HELDOUT_FRACTION = 0.2
HELDOUT_SEED = "medpg-learn-heldout-v1"


@dataclass(frozen=True)
class Judgments:
    """Queries (id -> text) and their graded documents (id -> medpg document id -> grade)."""

    queries: dict[str, str]
    qrels: dict[str, dict[int, int]]
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # only queries with at least one relevant document teach anything and can be scored
        keep = {
            q for q, docs in self.qrels.items() if any(g > 0 for g in docs.values()) and q in self.queries
        }
        object.__setattr__(self, "qrels", {q: self.qrels[q] for q in sorted(keep)})
        object.__setattr__(self, "queries", {q: self.queries[q] for q in sorted(keep)})

    @property
    def ids(self) -> list[str]:
        return list(self.qrels)

    def __len__(self) -> int:
        return len(self.qrels)

    def judgment_count(self) -> int:
        return sum(len(d) for d in self.qrels.values())

    def subset(self, ids: Iterable[str]) -> Judgments:
        chosen = [q for q in ids if q in self.qrels]
        return Judgments({q: self.queries[q] for q in chosen}, {q: self.qrels[q] for q in chosen})

    def relevant(self) -> dict[str, dict[str, int]]:
        """The qrels as ranx takes them: string document ids, relevant grades only."""
        return {q: {str(d): g for d, g in docs.items() if g > 0} for q, docs in self.qrels.items()}


def heldout_share(query_id: str, seed: str = HELDOUT_SEED) -> float:
    """A fixed number in [0, 1) per query id: the query is held out when it is below the fraction."""
    digest = hashlib.sha256(f"{seed}\0{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(judgments: Judgments, fraction: float = HELDOUT_FRACTION) -> tuple[Judgments, Judgments]:
    """(train, held out): a fixed ``fraction`` of the queries by ``heldout_share``; each side gets at
    least one query when there are two."""
    if len(judgments) < 2:
        raise InputError(
            f"{len(judgments)} judged quer{'y' if len(judgments) == 1 else 'ies'} with a relevant document: "
            "learning needs at least 2 (some to train on, some held out to check the result)"
        )
    shares = {q: heldout_share(q) for q in judgments.ids}
    held = [q for q in judgments.ids if shares[q] < fraction]
    if not held:
        held = [min(shares, key=lambda q: shares[q])]
    if len(held) == len(judgments):
        held.remove(max(held, key=lambda q: shares[q]))
    held_set = set(held)
    return judgments.subset(q for q in judgments.ids if q not in held_set), judgments.subset(held)


# --------------------------------------------------------------------------------------------------
# BEIR files


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id <TAB> corpus-id <TAB> score`` lines (a header line is skipped); a bad line is an
    InputError naming the file and line."""
    if not path.is_file():
        raise InputError(f"{path}: missing; give qrels/<split>.tsv of a BEIR data set")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if i == 1 and not row[-1].strip().lstrip("-").isdigit():
                continue  # header
            if len(row) < 3 or not row[0].strip() or not row[1].strip():
                raise InputError(f"{path}:{i}: expected query-id, corpus-id and score separated by tabs")
            try:
                grade = int(row[2].strip())
            except ValueError:
                raise InputError(f"{path}:{i}: the score must be an integer") from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = max(grade, 0)
    return qrels


def read_queries(path: Path, wanted: Iterable[str], max_chars: int) -> dict[str, str]:
    """The texts of the ``wanted`` query ids from a BEIR ``queries.jsonl``."""
    if not path.is_file():
        raise InputError(f"{path}: missing; a BEIR data set has queries.jsonl next to qrels/")
    want = set(wanted)
    queries: dict[str, str] = {}
    with path.open("rb") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                qid, text = str(obj["_id"]), obj.get("text", "")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{i}: expected a JSON object with _id and text") from None
            if qid not in want:
                continue
            if not isinstance(text, str):
                raise InputError(f"{path}:{i}: text must be a string")
            try:
                queries[qid] = prepare_query(text, max_chars)
            except InputError as exc:
                raise InputError(f"{path}:{i}: {exc}") from None
    missing = want - set(queries)
    if missing:
        raise InputError(f"{len(missing)} judged queries are missing from {path}")
    return queries


def _document_ids(db: Database, tenant: str, source: str, external_ids: Iterable[str]) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT external_id, id FROM medpg.documents WHERE tenant_id = %s AND source = %s "
            "AND external_id = ANY(%s)",
            (tenant, source, sorted(set(external_ids))),
        ).fetchall()
        conn.rollback()
    return {str(r[0]): int(r[1]) for r in rows}


def _map_documents(
    qrels: Mapping[str, Mapping[str, int]], ids: Mapping[str, int]
) -> tuple[dict[str, dict[int, int]], int]:
    mapped: dict[str, dict[int, int]] = {}
    missing = 0
    for q, docs in qrels.items():
        for ext, grade in docs.items():
            if ext in ids:
                mapped.setdefault(q, {})[ids[ext]] = grade
            else:
                missing += 1
    return mapped, missing


@dataclass(frozen=True)
class BeirJudgments:
    """Training and held-out judgments from a BEIR directory, and how they were chosen."""

    train: Judgments
    heldout: Judgments
    trained_on: dict[str, Any]


def from_beir(
    db: Database,
    dataset_dir: Path,
    *,
    split: str,
    dev_split: str | None,
    source: str | None,
    tenant: str | None,
    max_query_chars: int,
) -> BeirJudgments:
    """``qrels/<split>.tsv`` (and ``qrels/<dev_split>.tsv``, held out) with ``queries.jsonl``, mapped
    to the stored documents of ``source`` (default: the directory's name, as ``medpg ingest``
    names a BEIR corpus) in ``tenant`` (default 'default')."""
    dataset_dir = Path(dataset_dir)
    source = source or dataset_dir.resolve().name
    owner = check_tenant(tenant) if tenant is not None else DEFAULT_TENANT
    train_qrels = read_qrels(dataset_dir / "qrels" / f"{split}.tsv")
    dev_qrels = read_qrels(dataset_dir / "qrels" / f"{dev_split}.tsv") if dev_split else {}
    overlap = set(train_qrels) & set(dev_qrels)
    if overlap:
        raise InputError(
            f"{len(overlap)} queries are judged in both {split} and {dev_split}: the held-out split must "
            "hold other queries"
        )
    queries = read_queries(dataset_dir / "queries.jsonl", set(train_qrels) | set(dev_qrels), max_query_chars)
    external = {d for docs in (*train_qrels.values(), *dev_qrels.values()) for d in docs}
    ids = _document_ids(db, owner, source, external)
    if not ids:
        raise InputError(
            f"none of the {len(external):,} judged documents is stored in source {source!r} of tenant {owner!r}: "
            f"ingest and embed the corpus first (medpg ingest {dataset_dir} --tenant {owner}; medpg embed), "
            "or name its source with --source"
        )
    train_map, missing_train = _map_documents(train_qrels, ids)
    dev_map, missing_dev = _map_documents(dev_qrels, ids)
    everything = Judgments(queries, {**train_map, **dev_map})
    if dev_split:
        train, heldout = everything.subset(train_map), everything.subset(dev_map)
        held_how = f"the {dev_split} split"
    else:
        train, heldout = hash_split(everything)
        held_how = f"{HELDOUT_FRACTION:.0%} of the queries by a seeded hash of their ids"
    trained_on = {
        "source": "qrels",
        "dataset": dataset_dir.resolve().name,
        "documents_source": source,
        "tenant": owner,
        "split": split,
        "heldout": dev_split or f"hash {HELDOUT_FRACTION:.0%}",
        "heldout_how": held_how,
        "train_queries": len(train),
        "train_judgments": train.judgment_count(),
        "heldout_queries": len(heldout),
        "heldout_judgments": heldout.judgment_count(),
        "judged_documents_missing": missing_train + missing_dev,
    }
    return BeirJudgments(train, heldout, trained_on)


# --------------------------------------------------------------------------------------------------
# feedback recorded in PostgreSQL


def normalize_query(text: str) -> str:
    """One form per query for grouping feedback: whitespace runs become one space, ends trimmed."""
    return " ".join(text.split())


def feedback_query_id(text: str) -> str:
    """An id for a feedback query: a hash of its normalized text (the text stays in memory only)."""
    return "fb-" + hashlib.sha256(normalize_query(text).encode()).hexdigest()[:20]


_FEEDBACK = """
SELECT f.query, f.document_id, f.grade, f.kind
FROM medpg.feedback f
WHERE f.tenant_id = %s
ORDER BY f.created_at, f.id
"""


def from_feedback(
    db: Database, *, tenant: str | None, max_query_chars: int
) -> tuple[Judgments, Judgments, dict[str, Any]]:
    """(train, held out, what they are) from ``medpg.feedback`` of ``tenant`` (default 'default').

    Rows of one query (equal after ``normalize_query``) and document become one judgment: the
    latest 'marked' grade, or, when there is none, the latest 'opened' one.
    """
    owner = check_tenant(tenant) if tenant is not None else DEFAULT_TENANT
    with db.connect() as conn:
        rows = conn.execute(_FEEDBACK, (owner,)).fetchall()
        conn.rollback()
    if not rows:
        raise InputError(
            f"tenant {owner!r} has no feedback in medpg.feedback; record some with POST /feedback first"
        )
    queries: dict[str, str] = {}
    marked: dict[tuple[str, int], int] = {}
    opened: dict[tuple[str, int], int] = {}
    for text, document_id, grade, kind in rows:
        normalized = normalize_query(prepare_query(text, max_query_chars))
        if not normalized:
            continue
        qid = feedback_query_id(normalized)
        queries[qid] = normalized
        (marked if kind == "marked" else opened)[(qid, int(document_id))] = int(grade)
    graded = {**opened, **marked}
    qrels: dict[str, dict[int, int]] = {}
    for (qid, doc), grade in graded.items():
        qrels.setdefault(qid, {})[doc] = grade
    everything = Judgments(queries, qrels)
    train, heldout = hash_split(everything)
    trained_on = {
        "source": "feedback",
        "tenant": owner,
        "feedback_rows": len(rows),
        "heldout": f"hash {HELDOUT_FRACTION:.0%}",
        "heldout_how": f"{HELDOUT_FRACTION:.0%} of the queries by a seeded hash of their ids",
        "train_queries": len(train),
        "train_judgments": train.judgment_count(),
        "heldout_queries": len(heldout),
        "heldout_judgments": heldout.judgment_count(),
    }
    return train, heldout, trained_on


__all__ = [
    "HELDOUT_FRACTION",
    "BeirJudgments",
    "Judgments",
    "feedback_query_id",
    "from_beir",
    "from_feedback",
    "hash_split",
    "heldout_share",
    "normalize_query",
    "read_qrels",
    "read_queries",
]
