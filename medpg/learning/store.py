"""Query adaptations in PostgreSQL: versions, which one is active, switching and rolling back.

Each ``medpg learn`` run stores one row of ``medpg.query_adaptations`` (revision 0009), active or
not. An adaptation belongs to one tenant, or to every tenant (``tenant`` None): a tenant's own
active adaptation wins over the one for every tenant (``medpg.active_query_adaptation()``). At
most one is active per tenant and one for every tenant (a partial unique index).

A switch is one transaction under an advisory lock of its tenant: the active row is deactivated
and the new one activated, recording in ``previous_id`` what was active before, so
``rollback`` goes back to it. Searches see the old or the new adaptation, never none in between.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from medpg.access import check_tenant
from medpg.errors import InputError, NotFoundError
from medpg.learning.adapter import KIND, ResidualLinear

if TYPE_CHECKING:
    from medpg.db.engine import Database

_COLUMNS = """
id, created_at, tenant_id, kind, query_model, article_model, dimension, dense_weight, lexical_weight,
trained_on, training, heldout_ndcg10, baseline_ndcg10, baseline_id, active, activated_at, forced,
previous_id
"""


@dataclass(frozen=True)
class Adaptation:
    """One stored query adaptation (its parameters are loaded separately: ``load_adapter``)."""

    id: int
    created_at: datetime
    tenant: str | None  # None: every tenant
    kind: str
    query_model: str
    article_model: str
    dimension: int
    dense_weight: float
    lexical_weight: float
    trained_on: dict[str, Any]
    training: dict[str, Any]
    heldout_ndcg10: float
    baseline_ndcg10: float
    baseline_id: int | None
    active: bool
    activated_at: datetime | None
    forced: bool
    previous_id: int | None

    def applies_to(self) -> str:
        """For messages: whose searches it adapts."""
        return "every tenant" if self.tenant is None else f"tenant {self.tenant!r}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "tenant": self.tenant,
            "kind": self.kind,
            "query_model": self.query_model,
            "article_model": self.article_model,
            "dimension": self.dimension,
            "dense_weight": self.dense_weight,
            "lexical_weight": self.lexical_weight,
            "trained_on": self.trained_on,
            "training": self.training,
            "heldout_ndcg10": self.heldout_ndcg10,
            "baseline_ndcg10": self.baseline_ndcg10,
            "baseline_id": self.baseline_id,
            "active": self.active,
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
            "forced": self.forced,
            "previous_id": self.previous_id,
        }


def _adaptation(row: Sequence[Any]) -> Adaptation:
    return Adaptation(
        id=int(row[0]),
        created_at=row[1],
        tenant=row[2],
        kind=row[3],
        query_model=row[4],
        article_model=row[5],
        dimension=int(row[6]),
        dense_weight=float(row[7]),
        lexical_weight=float(row[8]),
        trained_on=dict(row[9]),
        training=dict(row[10]),
        heldout_ndcg10=float(row[11]),
        baseline_ndcg10=float(row[12]),
        baseline_id=row[13],
        active=bool(row[14]),
        activated_at=row[15],
        forced=bool(row[16]),
        previous_id=row[17],
    )


@dataclass(frozen=True)
class Switch:
    """What one switch changed: the tenant (None: every tenant) and the active id before and after."""

    tenant: str | None
    before: int | None
    after: int | None


def _target(tenant: str | None) -> str | None:
    return None if tenant is None else check_tenant(tenant)


def insert(
    conn: psycopg.Connection[Any],
    *,
    tenant: str | None,
    adapter: ResidualLinear,
    query_model: str,
    article_model: str,
    dense_weight: float,
    lexical_weight: float,
    trained_on: dict[str, Any],
    training: dict[str, Any],
    heldout_ndcg10: float,
    baseline_ndcg10: float,
    baseline_id: int | None,
) -> int:
    """Store an adaptation, inactive; its id. The caller commits (``activate`` may follow in the same
    transaction)."""
    row = conn.execute(
        """
        INSERT INTO medpg.query_adaptations
            (tenant_id, kind, query_model, article_model, dimension, weight, dense_weight, lexical_weight,
             trained_on, training, heldout_ndcg10, baseline_ndcg10, baseline_id)
        VALUES (%s, %s, %s, %s, %s, %s::vector[], %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s)
        RETURNING id
        """,
        (
            _target(tenant),
            KIND,
            query_model,
            article_model,
            adapter.dimension,
            _vector_array_literal(adapter.weight),
            dense_weight,
            lexical_weight,
            json.dumps(trained_on),
            json.dumps(training),
            heldout_ndcg10,
            baseline_ndcg10,
            baseline_id,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _vector_array_literal(matrix: np.ndarray) -> str:
    """``{"[...]","[...]"}``: the rows of ``matrix`` as a PostgreSQL vector[] literal (exact floats)."""
    rows = ('"[' + ",".join(repr(float(x)) for x in row) + ']"' for row in matrix.astype(np.float32))
    return "{" + ",".join(rows) + "}"


def load_adapter(conn: psycopg.Connection[Any], adaptation_id: int) -> ResidualLinear:
    """The parameters of one adaptation (as the connection's role may see them)."""
    row = conn.execute(
        "SELECT weight::text FROM medpg.query_adaptations WHERE id = %s", (adaptation_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no query adaptation {adaptation_id}")
    return ResidualLinear(_parse_vector_array(row[0]))


def _parse_vector_array(text: str) -> np.ndarray:
    """A vector[] in its text form (``{"[1,2]","[3,4]"}``) as a matrix, one row per vector."""
    inner = text.strip()[1:-1]
    rows = [part.strip().strip('"') for part in inner.split('","')] if inner else []
    return np.array([np.fromstring(r.strip("[]"), sep=",", dtype=np.float32) for r in rows], dtype=np.float32)


def list_adaptations(
    db: Database, *, tenant: str | None = None, every_tenant: bool = True
) -> list[Adaptation]:
    """Stored adaptations, newest first: those of ``tenant`` (and, with ``every_tenant``, those for
    every tenant); with no tenant, all of them."""
    with db.connect() as conn:
        if tenant is None:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM medpg.query_adaptations ORDER BY id DESC").fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM medpg.query_adaptations "
                "WHERE tenant_id = %s OR (%s AND tenant_id IS NULL) ORDER BY id DESC",
                (check_tenant(tenant), every_tenant),
            ).fetchall()
        conn.rollback()
    return [_adaptation(r) for r in rows]


def get_adaptation(conn: psycopg.Connection[Any], adaptation_id: int) -> Adaptation:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM medpg.query_adaptations WHERE id = %s", (adaptation_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no query adaptation {adaptation_id}; `medpg learn list` shows them")
    return _adaptation(row)


def active_id(conn: psycopg.Connection[Any], tenant: str | None) -> int | None:
    """The adaptation active for exactly ``tenant`` (None: the one for every tenant), or None."""
    row = conn.execute(
        "SELECT id FROM medpg.query_adaptations WHERE active AND tenant_id IS NOT DISTINCT FROM %s",
        (_target(tenant),),
    ).fetchone()
    return None if row is None else int(row[0])


def effective_id(conn: psycopg.Connection[Any], tenant: str | None) -> int | None:
    """The adaptation a search of ``tenant`` uses now (its own, else the one for every tenant)."""
    row = conn.execute(
        "SELECT id FROM medpg.query_adaptations q WHERE q.active "
        "AND (q.tenant_id IS NULL OR q.tenant_id = %s) "
        "AND q.article_model = (SELECT model FROM medpg.embedding_space) "
        "ORDER BY q.tenant_id NULLS LAST LIMIT 1",
        (_target(tenant),),
    ).fetchone()
    return None if row is None else int(row[0])


def _lock(conn: psycopg.Connection[Any], tenant: str | None) -> None:
    """Serialise switches of one tenant (None: of the adaptation for every tenant)."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('medpg.query_adaptations:' || %s, 0))",
        (tenant if tenant is not None else "*",),
    )


def switch_to(conn: psycopg.Connection[Any], adaptation_id: int, *, forced: bool = False) -> Switch:
    """Make ``adaptation_id`` the active one of its tenant, in the caller's transaction."""
    target = get_adaptation(conn, adaptation_id)
    _lock(conn, target.tenant)
    before = active_id(conn, target.tenant)
    if before == adaptation_id:
        return Switch(target.tenant, before, before)
    conn.execute(
        "UPDATE medpg.query_adaptations SET active = false WHERE active AND tenant_id IS NOT DISTINCT FROM %s",
        (target.tenant,),
    )
    conn.execute(
        "UPDATE medpg.query_adaptations SET active = true, activated_at = now(), forced = %s, previous_id = %s "
        "WHERE id = %s",
        (forced, before, adaptation_id),
    )
    return Switch(target.tenant, before, adaptation_id)


def activate(db: Database, adaptation_id: int, *, forced: bool = False) -> Switch:
    """Activate a stored adaptation (one transaction); what was active before becomes its previous."""
    with db.connect() as conn:
        switch = switch_to(conn, adaptation_id, forced=forced)
        conn.commit()
    return switch


def deactivate(db: Database, tenant: str | None = None) -> Switch:
    """No adaptation of ``tenant`` (None: the one for every tenant) is active afterwards."""
    target = _target(tenant)
    with db.connect() as conn:
        _lock(conn, target)
        before = active_id(conn, target)
        conn.execute(
            "UPDATE medpg.query_adaptations SET active = false WHERE active AND tenant_id IS NOT DISTINCT FROM %s",
            (target,),
        )
        conn.commit()
    return Switch(target, before, None)


def rollback(db: Database, tenant: str | None = None) -> Switch:
    """Back to what was active before the active adaptation of ``tenant`` was activated (none, or
    the one before it), in one transaction. Repeated, it walks further back."""
    target = _target(tenant)
    with db.connect() as conn:
        _lock(conn, target)
        current = active_id(conn, target)
        if current is None:
            conn.rollback()
            whose = "every tenant" if target is None else f"tenant {target!r}"
            raise InputError(
                f"no query adaptation is active for {whose}: nothing to roll back "
                "(`medpg learn activate ID` activates a stored one)"
            )
        previous = get_adaptation(conn, current).previous_id
        conn.execute("UPDATE medpg.query_adaptations SET active = false WHERE id = %s", (current,))
        if previous is not None:
            # keep the previous one's own history: a further rollback goes on from there
            conn.execute(
                "UPDATE medpg.query_adaptations SET active = true, activated_at = now() WHERE id = %s",
                (previous,),
            )
        conn.commit()
    return Switch(target, current, previous)


__all__ = [
    "Adaptation",
    "Switch",
    "activate",
    "active_id",
    "deactivate",
    "effective_id",
    "get_adaptation",
    "insert",
    "list_adaptations",
    "load_adapter",
    "rollback",
    "switch_to",
]
