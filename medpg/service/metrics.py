"""Prometheus metrics of one app: requests and latency per route template, the embedding backlog.

Each app has its own ``CollectorRegistry`` (tests create many apps in one process). Labels are
route templates (``/documents/{source}/{external_id}``), never raw paths: no ids, no text. The
backlog is counted at scrape time from the partial index of chunks without a current vector
(``chunks_pending_idx``), under a short statement timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medpg.db.engine import Database

log = logging.getLogger("medpg.service")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Chunks whose vector is missing or made from older text (the partial index holds exactly these),
# and those of them whose attempts are used up. During a model switch the staged vectors are not
# counted: this is the backlog of the model search uses.
_BACKLOG = """
SELECT count(*), count(*) FILTER (WHERE attempts >= %(max_attempts)s)
FROM medpg.chunks WHERE embedded_hash IS DISTINCT FROM content_hash
"""


class BacklogCollector(Collector):
    """``medpg_embedding_backlog_chunks{state="pending"|"failed"}`` read when Prometheus scrapes."""

    def __init__(self, db: Database, max_attempts: int) -> None:
        self.db = db
        self.max_attempts = max_attempts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("medpg_database_up", "1 when the backlog could be read from PostgreSQL.")
        try:
            with self.db.connect() as conn:
                conn.execute("SET LOCAL statement_timeout = '2s'")
                row = conn.execute(_BACKLOG, {"max_attempts": self.max_attempts}).fetchone()
                conn.rollback()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database did
            log.warning("metrics: embedding backlog not read (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        outdated, failed = (int(row[0]), int(row[1])) if row else (0, 0)
        backlog = GaugeMetricFamily(
            "medpg_embedding_backlog_chunks",
            "Chunks without a current vector: pending (incl. in flight and retrying) and failed.",
            labels=["state"],
        )
        backlog.add_metric(["pending"], outdated - failed)
        backlog.add_metric(["failed"], failed)
        up.add_metric([], 1)
        yield backlog
        yield up


class Metrics:
    """The app's registry and its request metrics."""

    def __init__(self, db: Database, max_attempts: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medpg_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "medpg_http_request_duration_seconds",
            "HTTP request duration by method, route template and status code.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(BacklogCollector(db, max_attempts))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # a client chooses the method: unknown ones share a label, so they cannot add series
        labels = (method if method in KNOWN_METHODS else "OTHER", route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["BacklogCollector", "Metrics"]
