"""Read documents from files, validate them, chunk them and upsert them into PostgreSQL.

Formats: JSON Lines with ``_id`` (or ``id``), ``title``, ``text``, optional ``metadata``
(an object), ``patient_id`` and ``date`` — BEIR's ``corpus.jsonl`` is this shape — and CSV
with a column mapping. Every row is validated before anything is written: without
``skip_invalid`` one bad row stops the run with the file and line named and nothing written;
with it, bad rows are skipped and reported one by one.

Writes go in batches, one transaction each, through COPY into a temporary table and one
upsert keyed by (source, external id). A content hash makes re-ingesting a file a no-op for
unchanged documents; a changed document gets new chunks, whose changed content hash marks
them for re-embedding.

The stages are modules: ``readers`` (file formats), ``validation`` (rows to Records),
``writer`` (batches to the database); ``ingest_file`` runs them in that order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medpg.access import DEFAULT_TENANT, check_tenant
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import InputError
from medpg.ingest.readers import (
    FIELDS,
    Format,
    default_source,
    detect_format,
    parse_csv_map,
    resolve_input,
)
from medpg.ingest.validation import Record, RowError, check_source, read_records
from medpg.ingest.writer import BatchResult, DocumentWriter, write_in_batches
from medpg.progress import DEFAULT_INTERVAL, progress_bar

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
# A file up to this size keeps its Records from validation for writing; a larger one is read twice.
KEEP_IN_MEMORY_BYTES = 256 * 1024 * 1024


@dataclass
class IngestReport:
    """What one ``ingest_file`` call did, summed over its batches."""

    file: str
    source: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    skipped: list[RowError] = field(default_factory=list)
    seconds: float = 0.0
    changed_document_ids: list[int] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: BatchResult) -> None:
        """Count one committed batch."""
        self.rows += result.rows
        self.inserted += result.inserted
        self.updated += result.updated
        self.unchanged += result.unchanged
        self.chunks_written += result.chunks_written
        self.changed_document_ids.extend(result.changed_ids)
        self.skipped.extend(result.refused)


@dataclass
class _Validated:
    """Pass 1's outcome: the bad rows, how many are good, and the good ones when they were kept."""

    errors: list[RowError]
    valid: int
    kept: list[Record] | None


def ingest_file(
    db: Database,
    settings: Settings,
    path: Path,
    *,
    source: str | None = None,
    tenant: str = DEFAULT_TENANT,
    fmt: Format = "auto",
    csv_map: str | None = None,
    skip_invalid: bool = False,
    progress: bool | None = None,
    after_commit: Callable[[list[int]], None] | None = None,
    progress_interval: float = DEFAULT_INTERVAL,
) -> IngestReport:
    """Validate every row of ``path``, then upsert the valid ones batch by batch.

    Without ``skip_invalid`` a bad row raises InputError (naming file and line) before anything
    is written; with it, bad rows, and rows PostgreSQL itself refuses when their batch is written,
    are skipped and listed in ``IngestReport.skipped``. A batch that fails in the database raises
    an error naming its refused rows and exactly the line ranges committed (see
    ``write_in_batches``). ``after_commit`` is called with the ids of inserted/changed documents
    after each batch commits (background embedding uses it to enqueue work). ``progress`` (True
    or None): a bar on a terminal, else a line with counts and rate every ``progress_interval``
    seconds on stderr; False: silent. Documents are written to ``tenant``.
    """
    check_tenant(tenant, argument="--tenant")
    path = resolve_input(Path(path))
    report = IngestReport(file=str(path), source=source or default_source(path))
    check_source(report.source)
    started = time.perf_counter()
    writer = DocumentWriter(
        db, settings, report.source, file=report.file, skip_refused=skip_invalid, tenant=tenant
    )

    def read() -> Iterable[Record | RowError]:
        return read_records(
            path, settings, fmt, csv_map, source=report.source, text_vector_check=writer.text_vector_refusal
        )

    # Pass 1: validate everything, so a bad row never leaves the database half-written.
    validated = _validate_file(
        read,
        keep=path.stat().st_size <= KEEP_IN_MEMORY_BYTES,
        bar=progress_bar(
            None, desc=f"validate {path.name}", unit="rows", enabled=progress, interval=progress_interval
        ),
    )
    report.skipped.extend(validated.errors)
    if validated.errors and not skip_invalid:
        raise _invalid_rows_error(path, validated.errors)
    # Pass 2: write the valid rows.
    records = _valid_records(read, validated)
    _write_records(
        writer,
        settings,
        report,
        records,
        total=validated.valid,
        progress=progress,
        progress_interval=progress_interval,
        after_commit=after_commit,
    )
    report.seconds = time.perf_counter() - started
    _log_report(report)
    return report


def _validate_file(read: Callable[[], Iterable[Record | RowError]], *, keep: bool, bar: tqdm) -> _Validated:
    """Read and validate every row; keep the valid Records when ``keep`` (the file is small enough).

    ``bar`` counts the rows read (a large file takes a while before anything is written).
    """
    validated = _Validated(errors=[], valid=0, kept=[] if keep else None)
    with bar:
        for item in read():
            bar.update(1)
            if isinstance(item, RowError):
                validated.errors.append(item)
            else:
                validated.valid += 1
                if validated.kept is not None:
                    validated.kept.append(item)
    return validated


def _invalid_rows_error(path: Path, errors: list[RowError]) -> InputError:
    """One error listing the first MAX_REPORTED_ERRORS bad rows and how many more there are."""
    shown = "\n  ".join(str(e) for e in errors[:MAX_REPORTED_ERRORS])
    more = len(errors) - MAX_REPORTED_ERRORS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return InputError(
        f"{len(errors)} invalid row(s) in {path}; nothing was written "
        f"(use --skip-invalid to load the valid rows):\n  {shown}{tail}"
    )


def _valid_records(
    read: Callable[[], Iterable[Record | RowError]], validated: _Validated
) -> Iterable[Record]:
    """The kept Records, or a second read of a file too large to keep (its bad lines left out)."""
    if validated.kept is not None:
        return validated.kept
    skipped_lines = {e.line for e in validated.errors}
    return (r for r in read() if isinstance(r, Record) and r.line not in skipped_lines)


def _write_records(
    writer: DocumentWriter,
    settings: Settings,
    report: IngestReport,
    records: Iterable[Record],
    *,
    total: int,
    progress: bool | None = None,
    progress_interval: float = DEFAULT_INTERVAL,
    after_commit: Callable[[list[int]], None] | None = None,
) -> None:
    """Write ``records`` with ``writer``'s parallel batches and count them in ``report``.

    Progress of ``total`` documents as ``progress_bar`` shows it (unless ``progress`` is False);
    the text index is flushed at the end when anything was written.
    """
    with progress_bar(
        total,
        desc=f"ingest {Path(report.file).name}",
        unit="documents",
        enabled=progress,
        interval=progress_interval,
    ) as bar:

        def committed(result: BatchResult) -> None:
            report.add(result)
            if after_commit is not None and result.changed_ids:
                after_commit(result.changed_ids)
            bar.update(result.rows)

        write_in_batches(
            writer,
            records,
            batch_size=settings.ingest_batch_size,
            workers=settings.ingest_workers,
            on_commit=committed,
        )
    if report.inserted or report.updated:
        writer.flush_text_index()


def _log_report(report: IngestReport) -> None:
    log.info(
        "ingested %s: %d rows, %d inserted, %d updated, %d unchanged, %d skipped in %.1fs",
        report.file,
        report.rows,
        report.inserted,
        report.updated,
        report.unchanged,
        len(report.skipped),
        report.seconds,
    )


__all__ = [
    "FIELDS",
    "BatchResult",
    "DocumentWriter",
    "Format",
    "IngestReport",
    "Record",
    "RowError",
    "default_source",
    "detect_format",
    "ingest_file",
    "parse_csv_map",
    "read_records",
    "resolve_input",
]
