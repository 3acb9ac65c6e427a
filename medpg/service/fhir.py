"""FHIR R4B DocumentReference for medpg: resources in, search parameters to filters, Bundles out.

Pure Python, no database. The service's FHIR routes call it:

- ``parse_payload`` / ``parse_document_reference``: a DocumentReference, or a Bundle (batch,
  transaction or collection) of them, validated with ``fhir.resources`` (R4B) and turned into
  ``FhirDocument``s whose ``to_row()`` is what ``medpg.documents.validate_documents`` accepts.
  Stored under source ``fhir`` (``SOURCE``) with the resource id as external id.
- ``search_filters``: ``GET /fhir/DocumentReference`` parameters as a ``FhirSearch`` (medpg
  ``Filters`` plus what jsonb containment alone cannot say).
- ``searchset_bundle`` / ``document_reference``: resources rebuilt from the stored metadata.
- ``operation_outcome`` / ``outcome_for_error``: errors as OperationOutcome.

Stored metadata layout (``documents.metadata``; search filters are jsonb containment on it)::

    {"fhir": {"resourceType": "DocumentReference", "id", "status", "docStatus", "type",
              "category", "identifier", "masterIdentifier", "context", "subject", "date",
              "description", "author", "authenticator", "custodian", "relatesTo", "securityLabel"},
     "fhir_tokens": {"type": [...], "category": [...], "status": ["current"]}}

Each coding of ``type`` and ``category`` gives the tokens ``system|code``, ``code`` and
``system|`` (a coding without a system: ``code`` and ``|code``), the forms a FHIR token search
parameter takes. Only the elements present are stored; attachments never are (their text is the
document body).

Documents whose ``status`` or ``docStatus`` is ``entered-in-error`` are refused with an issue
naming the element: a document recorded in error is deleted (``DELETE``), not kept where search
could find it.

Messages name elements (FHIRPath-like expressions such as
``Bundle.entry[2].resource.content[0].attachment.data``), types and sizes, never document text or
values: pydantic's own messages quote input values, so they are replaced by medpg's.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import codecs
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference

from medpg.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    InputError,
    MedpgError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SchemaMismatchError,
)
from medpg.retrieval.types import Explanation, Filters, SearchResult

SOURCE = "fhir"
"""The medpg source FHIR documents are stored under."""

EXPLANATION_URL = "https://medpg.dev/fhir/StructureDefinition/search-explanation"
"""The extension a searchset entry's resource carries: why medpg ranked it there."""

STATUSES = ("current", "superseded", "entered-in-error")
DOC_STATUSES = ("preliminary", "final", "amended", "entered-in-error")
BUNDLE_TYPES = ("batch", "transaction", "collection")
STATUS_SYSTEM = "http://hl7.org/fhir/document-reference-status"

MAX_COUNT = 100
DEFAULT_COUNT = 10
#: At most this many issues are reported for one request (the rest are counted).
MAX_ISSUES = 100

#: The elements of a DocumentReference kept in metadata["fhir"] (with resourceType).
STORED_ELEMENTS = (
    "id",
    "status",
    "docStatus",
    "type",
    "category",
    "identifier",
    "masterIdentifier",
    "context",
    "subject",
    "date",
    "description",
    "author",
    "authenticator",
    "custodian",
    "relatesTo",
    "securityLabel",
)

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_\-.:]{0,63}")
_PATIENT_REF = re.compile(
    r"(?:https?://\S+/)?Patient/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_MIME = re.compile(r"[A-Za-z0-9!#$&^_.+\-]{1,64}/[A-Za-z0-9!#$&^_.+\-]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")


# --- issues and errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class FhirIssue:
    """One problem: the element (or search parameter) it concerns and what is wrong with it.

    ``code`` is a FHIR issue-type code (``invalid``, ``required``, ``value``, ``not-supported``,
    ``too-costly``, ``not-found``, ...). ``message`` never quotes a value.
    """

    expression: str | None
    message: str
    code: str = "invalid"
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.expression}: {self.message}" if self.expression else self.message


class FhirError(InputError):
    """A FHIR payload or search that medpg refuses (HTTP 422), with every issue found."""

    def __init__(self, issues: Sequence[FhirIssue]) -> None:
        if not issues:
            issues = [FhirIssue(None, "invalid FHIR input")]
        self.issues: list[FhirIssue] = list(issues)
        shown = "; ".join(str(i) for i in self.issues[:20])
        more = f"; and {len(self.issues) - 20} more" if len(self.issues) > 20 else ""
        super().__init__(f"{len(self.issues)} FHIR issue(s): {shown}{more}")


def _issues_cap(issues: list[FhirIssue]) -> list[FhirIssue]:
    if len(issues) <= MAX_ISSUES:
        return issues
    rest = len(issues) - MAX_ISSUES
    return [*issues[:MAX_ISSUES], FhirIssue(None, f"and {rest} more issue(s) not listed")]


def operation_outcome(issues: FhirIssue | Iterable[FhirIssue]) -> dict[str, Any]:
    """An OperationOutcome resource (a dict ready for JSON) holding ``issues``."""
    items = [issues] if isinstance(issues, FhirIssue) else list(issues)
    if not items:
        items = [FhirIssue(None, "error", code="exception")]
    out: list[dict[str, Any]] = []
    for issue in items:
        entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        if issue.message:
            entry["diagnostics"] = issue.message
        if issue.expression:
            entry["expression"] = [issue.expression]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def issue_code(exc: BaseException) -> str:
    """The FHIR issue-type code for an error medpg raised."""
    if isinstance(exc, AuthenticationError):
        return "login"
    if isinstance(exc, PermissionDeniedError):
        return "forbidden"
    if isinstance(exc, NotFoundError):
        return "not-found"
    if isinstance(exc, PayloadTooLargeError):
        return "too-long"
    if isinstance(exc, InputError):
        return "invalid"
    if isinstance(exc, SchemaMismatchError):
        return "conflict"
    if isinstance(exc, DatabaseUnavailableError) or (isinstance(exc, MedpgError) and exc.transient):
        return "transient"
    return "exception"


def outcome_for_error(exc: BaseException) -> dict[str, Any]:
    """``exc`` as an OperationOutcome: a FhirError's own issues, else one issue with its message.

    The HTTP status is ``exc.http_status`` for a MedpgError (500 for anything else, whose message
    is not shown: it may quote values).
    """
    if isinstance(exc, FhirError):
        return operation_outcome(exc.issues)
    if isinstance(exc, MedpgError):
        return operation_outcome(FhirIssue(None, str(exc), code=issue_code(exc)))
    return operation_outcome(FhirIssue(None, "internal server error", code="exception"))


# --- pydantic errors as issues -----------------------------------------------------------------

_KINDS = {
    "string": "a string",
    "int": "an integer",
    "float": "a number",
    "decimal": "a number",
    "bool": "a boolean",
    "list": "a list (JSON array)",
    "dict": "an object",
    "model": "an object",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
    "bytes": "base64 data",
}
_SPEC_REGEX = re.compile(r"Value error, (\w{1,40}) value string does not match spec regex")


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _shown_type(value: Any) -> str | None:
    """A resource type name fit to show (a plain type name), else None."""
    return value if isinstance(value, str) and _RESOURCE_TYPE.fullmatch(value) else None


def _safe_name(part: str) -> str:
    return part if _NAME.fullmatch(part) else "<element>"


def _path(where: str, loc: Sequence[Any]) -> str:
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if part in ("root",) or "[" in part or "(" in part:
            continue  # pydantic's own validator names, not elements
        if part == "resource_type":
            part = "resourceType"
        elif part.startswith("_") and len(part) > 1:
            part = part[1:]  # a primitive's extension (``_status``) belongs to ``status``
        out += "." + _safe_name(part)
    return out


def _message(err: Mapping[str, Any]) -> str:
    """What pydantic found, in words that never quote the input value."""
    kind: str = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = _json_type(err.get("input"))
    if kind in ("missing", "model_field_validation.missing"):
        return "is required"
    if kind == "extra_forbidden":
        return "is not an element FHIR R4B defines here"
    if kind == "fhir-validation-wrong-resource-type":
        expected = ctx.get("expected_resource_type", "")
        return (
            f"must be {expected}" if _RESOURCE_TYPE.fullmatch(str(expected)) else "is the wrong resource type"
        )
    if kind == "base64_decode":
        return "is not valid base64"
    if kind == "string_pattern_mismatch":
        return "has characters or a form this element does not allow"
    if kind == "string_too_short":
        return "is empty"
    if kind == "string_too_long":
        return f"is longer than {int(ctx.get('max_length', 0))} characters"
    if kind == "too_short":
        return "has too few items"
    if kind == "too_long":
        return "has too many items"
    if kind == "model_validation_format":
        model = str(ctx.get("model_class", ""))
        what = f"a {model} object" if _RESOURCE_TYPE.fullmatch(model) else "an object"
        return f"must be {what}, got {got}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        base = kind.rsplit("_", 1)[0]
        expected = _KINDS.get(base, base.replace("_", " "))
        return f"must be {expected}, got {got}" if kind.endswith("_type") else f"is not {expected}"
    if kind == "value_error":
        match = _SPEC_REGEX.match(str(err.get("msg", "")))
        if match:
            return f"is not a valid FHIR {match.group(1)[0].lower() + match.group(1)[1:]}"
        return "has a value this element does not allow"
    return f"is not valid ({kind or 'unknown problem'})" if _NAME.fullmatch(kind or "x") else "is not valid"


def _pydantic_issues(exc: pydantic.ValidationError, where: str) -> list[FhirIssue]:
    issues = []
    for err in exc.errors():
        kind = err.get("type", "")
        code = "required" if "missing" in kind else "structure" if kind == "extra_forbidden" else "invalid"
        issues.append(FhirIssue(_path(where, err.get("loc", ())), _message(err), code=code))
    return issues


def _validate(model: type[Any], obj: Mapping[str, Any], where: str) -> tuple[Any, list[FhirIssue]]:
    try:
        return model.model_validate(obj), []
    except pydantic.ValidationError as exc:
        return None, _pydantic_issues(exc, where)
    except Exception:  # fhir.resources raises e.g. KeyError for some malformed nested resources
        return None, [FhirIssue(where, "could not be read as a FHIR R4B resource")]


def _text_issues(value: Any, where: str) -> Iterator[FhirIssue]:
    """Strings PostgreSQL cannot store (NUL, lone surrogates), anywhere in a JSON value."""
    if isinstance(value, str):
        if "\x00" in value:
            yield FhirIssue(where, "contains a NUL character, which PostgreSQL text cannot hold")
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                yield FhirIssue(where, "contains a lone surrogate (not valid Unicode)")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = key[1:] if isinstance(key, str) and key.startswith("_") and len(key) > 1 else key
            yield from _text_issues(key, f"{where} (an element name)")
            yield from _text_issues(item, f"{where}.{_safe_name(str(name))}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _text_issues(item, f"{where}[{i}]")


# --- DocumentReference -> FhirDocument ---------------------------------------------------------


@dataclass(frozen=True)
class FhirDocument:
    """A DocumentReference as medpg stores it (source ``fhir``, external id = resource id)."""

    id: str
    title: str
    text: str
    patient_id: str | None
    date: datetime | None
    metadata: dict[str, Any]

    def to_row(self) -> dict[str, Any]:
        """The row ``medpg.documents.validate_documents`` (``medpg ingest``'s rules) accepts."""
        return {
            "_id": self.id,
            "title": self.title,
            "text": self.text,
            "metadata": self.metadata,
            "patient_id": self.patient_id,
            "date": self.date.isoformat() if self.date is not None else None,
        }


def parse_payload(obj: Any) -> list[FhirDocument]:
    """A DocumentReference, or a batch/transaction/collection Bundle of them, as FhirDocuments.

    FhirError (422) with every issue found; nothing is returned unless every entry is valid.
    """
    if not isinstance(obj, Mapping):
        raise FhirError(
            [FhirIssue(None, f"the body must be a FHIR resource (a JSON object), got {_json_type(obj)}")]
        )
    resource_type = obj.get("resourceType")
    try:
        if resource_type == "DocumentReference":
            return [parse_document_reference(obj)]
        if resource_type == "Bundle":
            return _parse_bundle(obj)
    except RecursionError:
        raise FhirError([FhirIssue(None, "the resource is nested too deeply to read")]) from None
    shown = _shown_type(resource_type)
    what = f"a {shown}" if shown else "missing or not a resource type"
    raise FhirError(
        [FhirIssue("resourceType", f"must be DocumentReference or Bundle, got {what}", code="not-supported")]
    )


def _parse_bundle(obj: Mapping[str, Any]) -> list[FhirDocument]:
    issues: list[FhirIssue] = []
    entries = obj.get("entry")
    # The Bundle itself is validated without its resources, which are validated one by one so
    # that each issue names Bundle.entry[i].resource.
    shell = dict(obj)
    if isinstance(entries, list):
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, Mapping) else e for e in entries
        ]
    bundle, found = _validate(Bundle, shell, "Bundle")
    issues += found
    if bundle is not None and bundle.type not in BUNDLE_TYPES:
        issues.append(
            FhirIssue("Bundle.type", f"must be one of {', '.join(BUNDLE_TYPES)}", code="not-supported")
        )
    if not isinstance(entries, list) or not entries:
        if bundle is not None:
            issues.append(FhirIssue("Bundle.entry", "give at least one entry", code="required"))
        raise FhirError(_issues_cap(issues))
    docs: list[FhirDocument] = []
    first_at: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, Mapping):
            continue  # the Bundle's validation reported it
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            got = (
                "is required"
                if resource is None
                else f"must be a resource (an object), got {_json_type(resource)}"
            )
            issues.append(
                FhirIssue(f"{where}.resource", got, code="required" if resource is None else "invalid")
            )
            continue
        resource_type = resource.get("resourceType")
        if resource_type != "DocumentReference":
            shown = _shown_type(resource_type)
            issues.append(
                FhirIssue(
                    f"{where}.resource",
                    f"is {'a ' + shown if shown else 'not a resource'}; only DocumentReference resources are accepted",
                    code="not-supported",
                )
            )
            continue
        try:
            doc = parse_document_reference(resource, where=f"{where}.resource")
        except FhirError as exc:
            issues += exc.issues
            continue
        issues += _request_issues(entry.get("request"), doc.id, where)
        first = first_at.setdefault(doc.id, i)
        if first != i:
            issues.append(
                FhirIssue(
                    f"{where}.resource.id",
                    f"is the same id as Bundle.entry[{first}].resource",
                    code="duplicate",
                )
            )
            continue
        docs.append(doc)
    if issues:
        raise FhirError(_issues_cap(issues))
    return docs


def _request_issues(request: Any, resource_id: str, where: str) -> list[FhirIssue]:
    """A batch/transaction entry's request: POST, or PUT to DocumentReference/<its id>."""
    if not isinstance(request, Mapping):
        return []  # a collection, or no request given: the entry is an upsert by id
    method = request.get("method")
    if method == "POST":
        return []
    if method != "PUT":
        return [
            FhirIssue(
                f"{where}.request.method", "must be POST or PUT (an upsert by id)", code="not-supported"
            )
        ]
    url = request.get("url")
    if not isinstance(url, str) or url.split("?")[0].rstrip("/") not in (
        f"DocumentReference/{resource_id}",
        f"/DocumentReference/{resource_id}",
    ):
        return [FhirIssue(f"{where}.request.url", "must be DocumentReference/<the resource's id>")]
    return []


def parse_document_reference(
    obj: Mapping[str, Any], *, where: str = "DocumentReference", id: str | None = None
) -> FhirDocument:
    """One DocumentReference as a FhirDocument; FhirError naming every bad element.

    ``where`` prefixes each issue's expression (``Bundle.entry[2].resource`` inside a Bundle).
    ``id`` (a ``PUT /fhir/DocumentReference/{id}``): the resource's id must be that, or absent.
    """
    if not isinstance(obj, Mapping):
        raise FhirError([FhirIssue(where, f"must be a resource (an object), got {_json_type(obj)}")])
    issues = list(_text_issues(obj, where))
    if obj.get("resourceType") != "DocumentReference":
        issues.append(FhirIssue(f"{where}.resourceType", "must be DocumentReference"))
    issues += _contained_type_issues(obj, where)
    if issues:
        raise FhirError(_issues_cap(issues))
    body = dict(obj)
    if id is not None and body.get("id") is None:
        body["id"] = id
    resource, issues = _validate(DocumentReference, body, where)
    if resource is None:
        raise FhirError(_issues_cap(issues))
    resource_id = resource.id
    if resource_id is None:
        issues.append(
            FhirIssue(f"{where}.id", "is required: medpg stores a document under its id", code="required")
        )
    elif not _ID.fullmatch(resource_id):
        issues.append(FhirIssue(f"{where}.id", "must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"))
    elif id is not None and resource_id != id:
        issues.append(FhirIssue(f"{where}.id", "must equal the id in the request URL"))
    issues += _code_issues(resource.status, STATUSES, f"{where}.status")
    if resource.docStatus is not None:
        issues += _code_issues(resource.docStatus, DOC_STATUSES, f"{where}.docStatus")
    patient_id, found = _patient_id(resource.subject, f"{where}.subject")
    issues += found
    text, found = _content_text(body, resource, where)
    issues += found
    if issues:
        raise FhirError(_issues_cap(issues))
    assert resource_id is not None
    return FhirDocument(
        id=resource_id,
        title=_title(resource),
        text=text,
        patient_id=patient_id,
        date=resource.date,
        metadata=_metadata(resource),
    )


def _contained_type_issues(obj: Mapping[str, Any], where: str) -> list[FhirIssue]:
    # fhir.resources fails with a KeyError on an unknown contained resource type: check first.
    contained = obj.get("contained")
    if not isinstance(contained, list):
        return []
    issues = []
    for j, item in enumerate(contained):
        if not isinstance(item, Mapping):
            continue
        name = item.get("resourceType")
        if not isinstance(name, str) or not _RESOURCE_TYPE.fullmatch(name) or not _known_resource(name):
            issues.append(
                FhirIssue(f"{where}.contained[{j}].resourceType", "is not a FHIR R4B resource type")
            )
    return issues


def _known_resource(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError, ImportError):
        return False
    return True


def _code_issues(value: str | None, allowed: Sequence[str], where: str) -> list[FhirIssue]:
    if value is None:
        return [FhirIssue(where, "is required", code="required")]
    if value not in allowed:
        return [FhirIssue(where, f"must be one of {' | '.join(allowed)}", code="code-invalid")]
    if value == "entered-in-error":
        return [
            FhirIssue(
                where,
                "entered-in-error documents are not stored (medpg would find them in search); "
                "delete the document instead",
                code="business-rule",
            )
        ]
    return []


def _patient_id(subject: Any, where: str) -> tuple[str | None, list[FhirIssue]]:
    if subject is None:
        return None, []
    reference = subject.reference
    if reference is None:
        return None, [
            FhirIssue(f"{where}.reference", "is required: the subject must be Patient/<id>", code="required")
        ]
    match = _PATIENT_REF.fullmatch(reference)
    if match is None:
        return None, [
            FhirIssue(f"{where}.reference", "must reference a Patient (Patient/<id>)", code="not-supported")
        ]
    return match.group("id"), []


def _title(resource: Any) -> str:
    if resource.description and resource.description.strip():
        return str(resource.description).strip()
    concept = resource.type
    if concept is not None:
        if concept.text and concept.text.strip():
            return str(concept.text).strip()
        for coding in concept.coding or ():
            if coding.display and coding.display.strip():
                return str(coding.display).strip()
    return ""


def _concept_tokens(concepts: Iterable[Any]) -> list[str]:
    tokens: list[str] = []
    for concept in concepts:
        for coding in concept.coding or ():
            system, code = coding.system, coding.code
            if code:
                tokens += [f"{system}|{code}", code] if system else [code, f"|{code}"]
            if system:
                tokens.append(f"{system}|")
    return list(dict.fromkeys(tokens))


def _metadata(resource: Any) -> dict[str, Any]:
    dumped = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    fhir: dict[str, Any] = {"resourceType": "DocumentReference"}
    for name in STORED_ELEMENTS:
        if name in dumped:
            fhir[name] = dumped[name]
    return {
        "fhir": fhir,
        "fhir_tokens": {
            "type": _concept_tokens([resource.type] if resource.type is not None else []),
            "category": _concept_tokens(resource.category or []),
            "status": [resource.status],
        },
    }


# --- attachments -------------------------------------------------------------------------------


def _content_text(raw: Mapping[str, Any], resource: Any, where: str) -> tuple[str, list[FhirIssue]]:
    """The text of every attachment, joined with blank lines; an issue for each unreadable one."""
    issues: list[FhirIssue] = []
    parts: list[str] = []
    content = resource.content or []
    if not content:
        issue = FhirIssue(
            f"{where}.content", "give at least one attachment with the document's text", code="required"
        )
        return "", [issue]
    raw_content = raw.get("content") or []
    binaries = _contained_binaries(raw.get("contained"))
    for i, item in enumerate(content):
        at = f"{where}.content[{i}].attachment"
        raw_attachment = raw_content[i].get("attachment", {}) if i < len(raw_content) else {}
        text, found = _attachment_text(item.attachment, raw_attachment, binaries, at, where)
        issues += found
        if text is not None and text.strip():
            parts.append(text.strip())
    if not issues and not parts:
        issues.append(
            FhirIssue(f"{where}.content", "yields no text (every attachment is empty)", code="required")
        )
    return "\n\n".join(parts), issues


def _contained_binaries(contained: Any) -> dict[str, tuple[int, Mapping[str, Any]]]:
    found: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for j, item in enumerate(contained if isinstance(contained, list) else []):
        if (
            isinstance(item, Mapping)
            and item.get("resourceType") == "Binary"
            and isinstance(item.get("id"), str)
        ):
            found.setdefault(item["id"], (j, item))
    return found


def _attachment_text(
    attachment: Any,
    raw: Mapping[str, Any],
    binaries: Mapping[str, tuple[int, Mapping[str, Any]]],
    at: str,
    where: str,
) -> tuple[str | None, list[FhirIssue]]:
    content_type = attachment.contentType
    data, data_at = raw.get("data"), f"{at}.data"
    type_at = f"{at}.contentType"
    if data is None:
        url = attachment.url
        if isinstance(url, str) and url.startswith("#"):
            binary = binaries.get(url[1:])
            if binary is None:
                return None, [FhirIssue(f"{at}.url", "refers to a contained Binary that is not in contained")]
            j, item = binary
            data, data_at = item.get("data"), f"{where}.contained[{j}].data"
            content_type, type_at = item.get("contentType"), f"{where}.contained[{j}].contentType"
            if data is None:
                issue = FhirIssue(
                    data_at, "is required: medpg reads the contained Binary's data", code="required"
                )
                return None, [issue]
        elif url is not None:
            return None, [
                FhirIssue(
                    at,
                    "refers to a document by URL, which medpg does not fetch; send the text as base64 data "
                    "(or a contained Binary)",
                    code="not-supported",
                )
            ]
        else:
            return None, [
                FhirIssue(at, "has no data: medpg needs the document's text as base64 data", code="required")
            ]
    if not isinstance(data, str):
        return None, [FhirIssue(data_at, f"must be base64 text, got {_json_type(data)}")]
    if content_type is None:
        return None, [FhirIssue(type_at, "is required (text/plain or text/html)", code="required")]
    mime, params = _parse_content_type(content_type)
    if mime not in ("text/plain", "text/html"):
        shown = mime if _MIME.fullmatch(mime) else "this content type"
        return None, [
            FhirIssue(
                at, f"is {shown}, which medpg cannot read; send text/plain or text/html", code="not-supported"
            )
        ]
    try:
        payload = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError):
        return None, [FhirIssue(data_at, "is not valid base64")]
    charset = params.get("charset", "utf-8")
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        return None, [FhirIssue(type_at, "names a character set medpg does not know")]
    name = "utf-8-sig" if codec.name == "utf-8" else codec.name
    try:
        text = payload.decode(name)
    except UnicodeDecodeError:
        return None, [FhirIssue(data_at, f"is not valid {codec.name} text")]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if mime == "text/html":
        text = html_to_text(text)
    found = [FhirIssue(data_at, issue.message) for issue in _text_issues(text, data_at)]
    return (None, found) if found else (text, [])


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    mime, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, val = item.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"').strip()
    return mime.strip().lower(), params


class _HtmlText(HTMLParser):
    """HTML to text: scripts, styles and markup go, block elements become paragraph breaks."""

    SKIP = frozenset({"script", "style", "template", "title", "noscript"})
    PARAGRAPH = frozenset(
        {
            "p", "div", "section", "article", "header", "footer", "aside", "nav", "main",
            "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre",
            "figure", "figcaption", "address", "hr", "form", "fieldset", "details", "summary",
            "body", "html",
        }
    )  # fmt: skip
    LINE = frozenset({"br", "li", "dt", "dd", "tr", "caption", "thead", "tbody", "tfoot"})
    CELL = frozenset({"td", "th"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skip = 0
        self.pre = 0

    def _break(self, tag: str) -> None:
        if tag in self.PARAGRAPH:
            self.pieces.append("\n\n")
        elif tag in self.LINE:
            self.pieces.append("\n")
        elif tag in self.CELL:
            self.pieces.append(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "pre":
            self.pre += 1
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.PARAGRAPH:
            self._break(tag)  # lines and cells break where they start

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.SKIP:
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.pieces.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """The text of an HTML document or fragment, paragraphs separated by blank lines."""
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.pieces).replace("\xa0", " ")
    lines = [line.strip(" \t") for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- search parameters -------------------------------------------------------------------------

_TOKEN_PARAMS = ("category", "type")
_KNOWN_PARAMS = (
    "patient", "subject", "category", "type", "date", "status", "_id", "_text", "_content", "_count",
)  # fmt: skip
_IGNORED_PARAMS = ("_format", "_summary")
_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True)
class FhirSearch:
    """``GET /fhir/DocumentReference`` parameters as medpg filters.

    ``metadata_any``: conditions on the stored metadata, each a tuple of jsonb containment
    objects of which one must hold (a parameter's comma-separated values); every tuple must hold
    (repeated parameters, different parameters). ``metadata_containment()`` is what SQL can
    filter on (every single-valued condition); when ``needs_post_filter``, search results must
    also pass ``matches(metadata)``. ``empty``: the conditions contradict each other (e.g.
    ``patient=1&subject=2``, or a date range that is empty): answer with no entries.
    """

    patients: tuple[str, ...] | None = None
    text: str | None = None
    count: int = DEFAULT_COUNT
    date_from: datetime | None = None
    date_to: datetime | None = None
    metadata_any: tuple[tuple[dict[str, Any], ...], ...] = ()
    ids: tuple[str, ...] | None = None
    empty: bool = False

    def metadata_containment(self) -> dict[str, Any] | None:
        """One jsonb containment object: all the single-alternative conditions merged."""
        merged: dict[str, Any] = {}
        for group in self.metadata_any:
            if len(group) == 1:
                merged = _merge(merged, group[0])
        return merged or None

    @property
    def needs_post_filter(self) -> bool:
        """True when some condition has alternatives (OR), which only ``matches`` checks."""
        return any(len(group) > 1 for group in self.metadata_any)

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Whether a document's metadata meets every condition (jsonb ``@>`` semantics)."""
        return all(any(_contains(metadata, alt) for alt in group) for group in self.metadata_any)

    def to_filters(self, source: str = SOURCE) -> Filters:
        """medpg Filters: the source, patients, date range and ``metadata_containment()``."""
        return Filters(
            sources=(source,),
            metadata=self.metadata_containment(),
            date_from=self.date_from,
            date_to=self.date_to,
            patient_ids=self.patients,
        )


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value)
        elif key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out[key] = value
    return out


def _contains(value: Any, wanted: Any) -> bool:
    """PostgreSQL's jsonb ``value @> wanted`` for objects, arrays and scalars."""
    if isinstance(wanted, Mapping):
        return isinstance(value, Mapping) and all(
            k in value and _contains(value[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(value, list) and all(any(_contains(item, w) for item in value) for w in wanted)
    if isinstance(wanted, bool) or isinstance(value, bool):
        return type(value) is type(wanted) and value == wanted
    return bool(value == wanted)


def _values(raw: str | Sequence[str]) -> list[str]:
    return [raw] if isinstance(raw, str) else [str(v) for v in raw]


def _split(value: str) -> list[str]:
    """A FHIR parameter value split on unescaped commas (``\\,`` is a literal comma)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescaped_bar(value: str) -> int:
    escaped = False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            return i
    return -1


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


class _Params:
    """Collects issues while reading one search's parameters."""

    def __init__(self) -> None:
        self.issues: list[FhirIssue] = []

    def fail(self, name: str, message: str, code: str = "invalid") -> None:
        self.issues.append(FhirIssue(name, f"search parameter {name}: {message}", code=code))


def search_filters(params: Mapping[str, str | Sequence[str]]) -> FhirSearch:
    """Parse ``GET /fhir/DocumentReference`` parameters; FhirError (422) naming each bad one.

    ``params`` maps each name to its value or its values in order (a repeated parameter).
    Supported: ``patient`` / ``subject`` (``123``, ``Patient/123``; repeated or comma-separated:
    any of them), ``category`` and ``type`` (tokens ``system|code``, ``code``, ``|code``,
    ``system|``; comma: any of them; repeated: all of them), ``date`` (repeatable; prefixes eq, ge,
    gt, le, lt; precision YYYY to instants), ``status``, ``_id``, ``_text`` / ``_content`` (the
    full-text query), ``_count`` (1-100, default 10). ``_format`` and ``_summary`` are ignored;
    any other parameter or modifier is refused.
    """
    p = _Params()
    given: dict[str, list[str]] = {}
    for raw_name, raw in params.items():
        base, _, modifier = raw_name.partition(":")
        name = "subject" if (base, modifier) == ("subject", "Patient") else raw_name
        if base in _IGNORED_PARAMS and not modifier:
            continue
        shown = raw_name if _NAME.fullmatch(raw_name) else "<a parameter>"
        if base in _KNOWN_PARAMS and modifier and name == raw_name:
            p.fail(shown, "modifiers are not supported", "not-supported")
            continue
        if name not in _KNOWN_PARAMS:
            p.fail(shown, f"is not supported; medpg supports {', '.join(_KNOWN_PARAMS)}", "not-supported")
            continue
        values = _values(raw)
        for value in values:
            for issue in _text_issues(value, name):
                p.fail(name, issue.message)
        given.setdefault(name, []).extend(values)
    if p.issues:
        raise FhirError(p.issues)

    empty = False
    patients: tuple[str, ...] | None = None
    for name in ("patient", "subject"):
        if name in given:
            found = _patients(p, name, given[name])
            if patients is None:
                patients = found
            else:
                patients = tuple(x for x in patients if x in found)
                empty = empty or not patients
    groups: list[tuple[dict[str, Any], ...]] = []
    for name in _TOKEN_PARAMS:
        for value in given.get(name, []):
            tokens = _tokens(p, name, value)
            if tokens:
                groups.append(tuple({"fhir_tokens": {name: [t]}} for t in tokens))
    if "status" in given:
        statuses = _statuses(p, given["status"])
        if statuses is not None:
            empty = empty or not statuses
            groups.append(tuple({"fhir_tokens": {"status": [s]}} for s in statuses))
    ids = None
    if "_id" in given:
        ids = _ids(p, given["_id"])
        if ids is not None:
            empty = empty or not ids
            groups.append(tuple({"fhir": {"id": i}} for i in ids))
    date_from, date_to = _date_range(p, given.get("date", []))
    if date_from is not None and date_to is not None and date_from >= date_to:
        empty = True
    text = _query_text(p, given)
    count = _count(p, given.get("_count"))
    if p.issues:
        raise FhirError(p.issues)
    return FhirSearch(
        patients=patients,
        text=text,
        count=count,
        date_from=date_from,
        date_to=date_to,
        metadata_any=tuple(g for g in groups if g),
        ids=ids,
        empty=empty,
    )


def _alternatives(p: _Params, name: str, values: Sequence[str]) -> list[str] | None:
    """Every comma-separated item of every value; None (and an issue) if any is empty."""
    items = [_unescape(item).strip() for value in values for item in _split(value)]
    if not items or any(not item for item in items):
        p.fail(name, "has an empty value")
        return None
    return items


def _patients(p: _Params, name: str, values: Sequence[str]) -> tuple[str, ...]:
    items = _alternatives(p, name, values)
    found: list[str] = []
    for item in items or ():
        match = _PATIENT_REF.fullmatch(item)
        if match is not None:
            found.append(match.group("id"))
        elif _ID.fullmatch(item):
            found.append(item)
        else:
            p.fail(name, "must be a patient id or a Patient reference (Patient/<id>)")
    return tuple(dict.fromkeys(found))


def _tokens(p: _Params, name: str, value: str) -> list[str]:
    tokens: list[str] = []
    for item in _split(value):
        bar = _unescaped_bar(item)
        if bar < 0:
            code, system = _unescape(item).strip(), None
        else:
            system, code = _unescape(item[:bar]).strip(), _unescape(item[bar + 1 :]).strip()
        if not code and not system:
            p.fail(name, "has an empty token (give code, system|code, |code or system|)")
            return []
        tokens.append(f"{system}|{code}" if system is not None else code)
    return list(dict.fromkeys(tokens))


def _statuses(p: _Params, values: Sequence[str]) -> tuple[str, ...] | None:
    """The statuses allowed by every repeated ``status`` (each value: any of its items)."""
    result: set[str] | None = None
    for value in values:
        allowed: set[str] = set()
        for item in _split(value):
            bar = _unescaped_bar(item)
            system, code = (None, item.strip()) if bar < 0 else (item[:bar].strip(), item[bar + 1 :].strip())
            if system not in (None, "", STATUS_SYSTEM) or code not in STATUSES:
                p.fail("status", f"must be {' | '.join(STATUSES)}", "code-invalid")
                return None
            allowed.add(code)
        result = allowed if result is None else result & allowed
    return tuple(s for s in STATUSES if result and s in result)


def _ids(p: _Params, values: Sequence[str]) -> tuple[str, ...] | None:
    result: list[str] | None = None
    for value in values:
        items = _alternatives(p, "_id", [value])
        if items is None:
            return None
        if any(not _ID.fullmatch(i) for i in items):
            p.fail("_id", "must be resource ids (1-64 characters of A-Z, a-z, 0-9, '-' and '.')")
            return None
        result = items if result is None else [i for i in result if i in items]
    return tuple(dict.fromkeys(result or ()))


def _date_range(p: _Params, values: Sequence[str]) -> tuple[datetime | None, datetime | None]:
    """The half-open range [from, to) every ``date`` value allows (they are ANDed)."""
    date_from: datetime | None = None
    date_to: datetime | None = None
    for value in values:
        value = value.strip()
        if "," in value:
            p.fail("date", "comma-separated values are not supported; repeat the parameter", "not-supported")
            continue
        prefix = value[:2] if value[:2] in _PREFIXES else "eq"
        rest = value[2:] if value[:2] in _PREFIXES else value
        if prefix in ("ne", "sa", "eb", "ap"):
            p.fail(
                "date", f"the prefix {prefix} is not supported (use eq, ge, gt, le or lt)", "not-supported"
            )
            continue
        bounds = _date_bounds(rest)
        if bounds is None:
            p.fail("date", "must be a date YYYY, YYYY-MM, YYYY-MM-DD or a date-time, with an optional prefix")
            continue
        start, end = bounds
        low, high = {
            "eq": (start, end),
            "ge": (start, None),
            "gt": (end, None),
            "le": (None, end),
            "lt": (None, start),
        }[prefix]
        if prefix == "gt" and end is None:
            low, high = start, start  # after the end of year 9999: nothing
        if low is not None:
            date_from = low if date_from is None else max(date_from, low)
        if high is not None:
            date_to = high if date_to is None else min(date_to, high)
    return date_from, date_to


def _date_bounds(value: str) -> tuple[datetime, datetime | None] | None:
    """The instants [start, end) a (partial) FHIR date or date-time covers; end None past 9999."""
    m = _DATE.fullmatch(value)
    if m is None:
        return None
    g = m.groupdict()
    tz = _tz(g["tz"])
    if tz is None:
        return None
    try:
        year = int(g["y"])
        month, day = int(g["m"] or 1), int(g["d"] or 1)
        hour, minute, second = int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0)
        fraction = (g["f"] or "")[:6]
        micro = int(fraction.ljust(6, "0")) if fraction else 0
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None
    try:
        if g["f"]:
            end = start + timedelta(microseconds=10 ** (6 - len(fraction)))
        elif g["S"]:
            end = start + timedelta(seconds=1)
        elif g["M"]:
            end = start + timedelta(minutes=1)
        elif g["d"]:
            end = start + timedelta(days=1)
        elif g["m"]:
            end = start + timedelta(days=calendar.monthrange(year, month)[1])
        else:
            end = start.replace(year=year + 1)
    except (OverflowError, ValueError):
        return start, None
    return start, end


def _tz(value: str | None) -> timezone | None:
    if value in (None, "Z"):
        return UTC
    assert value is not None
    hours, minutes = int(value[1:3]), int(value[4:6])
    if hours > 14 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if value[0] == "-" else offset)


def _query_text(p: _Params, given: Mapping[str, list[str]]) -> str | None:
    values = [(name, v) for name in ("_text", "_content") for v in given.get(name, [])]
    if not values:
        return None
    if len(values) > 1:
        p.fail(values[1][0], "give one full-text query (one _text or one _content)")
        return None
    name, value = values[0]
    if not value.strip():
        p.fail(name, "is empty")
        return None
    return value.strip()


def _count(p: _Params, values: Sequence[str] | None) -> int:
    if not values:
        return DEFAULT_COUNT
    if len(values) > 1:
        p.fail("_count", "is given more than once")
        return DEFAULT_COUNT
    value = values[0].strip()
    if not re.fullmatch(r"\d{1,9}", value):
        p.fail("_count", f"must be an integer from 1 to {MAX_COUNT}")
        return DEFAULT_COUNT
    count = int(value)
    if count > MAX_COUNT:
        p.fail("_count", f"must be at most {MAX_COUNT}", "too-costly")
    elif count < 1:
        p.fail("_count", f"must be an integer from 1 to {MAX_COUNT}")
    return count


# --- resources out -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchsetEntry:
    """One search hit as the searchset Bundle shows it.

    ``metadata``: the document's stored metadata (``metadata["fhir"]`` rebuilds the resource);
    ``explanation``: medpg's account of the rank, in words; ``evidence``: the passage shown (only
    when the caller wants it); ``components``: score components by name (``dense_score``,
    ``lexical_rank``, ...), shown as valueDecimal (floats) or valueInteger (ints); ``text``: the
    document's text, included only by ``searchset_bundle(..., include_text=True)``.
    """

    id: str
    metadata: Mapping[str, Any]
    score: float | None = None
    explanation: str | None = None
    evidence: str | None = None
    patient_id: str | None = None
    date: datetime | None = None
    title: str | None = None
    components: Mapping[str, float | int | None] = field(default_factory=dict)
    text: str | None = None
    last_updated: datetime | None = None


def explanation_text(explanation: Explanation) -> str:
    """medpg's Explanation of a rank in one line (ranks, scores, matched terms, fusion, rerank)."""
    parts = []
    if explanation.dense_rank is not None or explanation.dense_score is not None:
        parts.append(f"dense: {_rank_score(explanation.dense_rank, explanation.dense_score)}")
    if explanation.lexical_rank is not None or explanation.lexical_score is not None:
        lexical = f"lexical: {_rank_score(explanation.lexical_rank, explanation.lexical_score)}"
        if explanation.matched_terms:
            lexical += f" (matched terms: {', '.join(explanation.matched_terms)})"
        parts.append(lexical)
    if explanation.fused_score is not None:
        parts.append(f"fused score {explanation.fused_score:.4g}")
    parts.append(f"first-stage rank {explanation.first_stage_rank}")
    if explanation.rerank_score is not None:
        parts.append(f"rerank score {explanation.rerank_score:.4g}")
    return "; ".join(parts)


def _rank_score(rank: int | None, score: float | None) -> str:
    shown = [f"rank {rank}" if rank is not None else "not ranked"]
    if score is not None:
        shown.append(f"score {score:.4g}")
    return ", ".join(shown)


def entry_from_result(result: SearchResult, *, evidence: bool = True) -> SearchsetEntry:
    """A medpg SearchResult as a SearchsetEntry (with its evidence passage when ``evidence``)."""
    e = result.explanation
    components: dict[str, float | int | None] = {
        "dense_rank": e.dense_rank,
        "dense_score": e.dense_score,
        "lexical_rank": e.lexical_rank,
        "lexical_score": e.lexical_score,
        "fused_score": e.fused_score,
        "first_stage_rank": e.first_stage_rank,
        "rerank_score": e.rerank_score,
    }
    return SearchsetEntry(
        id=result.external_id,
        metadata=result.metadata,
        score=result.score,
        explanation=explanation_text(e),
        evidence=result.evidence.text if evidence and result.evidence.text else None,
        patient_id=result.patient_id,
        date=result.document_date,
        title=result.title,
        components=components,
    )


def _instant(value: datetime) -> str:
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


def _resource(
    metadata: Mapping[str, Any],
    *,
    id: str,
    patient_id: str | None,
    date: datetime | None,
    title: str | None,
    last_updated: datetime | None,
) -> dict[str, Any]:
    """A DocumentReference rebuilt from metadata["fhir"] (or from the row when there is none)."""
    stored = metadata.get("fhir") if isinstance(metadata, Mapping) else None
    stored = stored if isinstance(stored, Mapping) else {}
    resource: dict[str, Any] = {"resourceType": "DocumentReference", "id": id}
    if last_updated is not None:
        resource["meta"] = {"lastUpdated": _instant(last_updated)}
    for name in STORED_ELEMENTS:
        if name != "id" and name in stored:
            resource[name] = stored[name]
    resource.setdefault("status", "current")
    if "subject" not in resource and patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if "date" not in resource and date is not None:
        resource["date"] = _instant(date)
    if not stored and title and title.strip():  # a FHIR document's title is its description or type
        resource["description"] = title
    return resource


def _attachment(url: str | None, title: str | None, text: str | None) -> dict[str, Any]:
    attachment: dict[str, Any] = {"contentType": "text/plain; charset=utf-8"}
    if text is not None:
        data = text.encode("utf-8")
        attachment["data"] = base64.b64encode(data).decode("ascii")
        attachment["size"] = len(data)
        attachment["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
    if url is not None:
        attachment["url"] = url
    if title and title.strip():
        attachment["title"] = title
    return attachment


def _explanation_extension(entry: SearchsetEntry) -> dict[str, Any] | None:
    parts: list[dict[str, Any]] = []
    if entry.explanation and entry.explanation.strip():
        parts.append({"url": "explanation", "valueString": entry.explanation})
    if entry.evidence and entry.evidence.strip():
        parts.append({"url": "evidence", "valueString": entry.evidence})
    for name, value in entry.components.items():
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            parts.append({"url": name, "valueInteger": value})
        elif math.isfinite(value):
            parts.append({"url": name, "valueDecimal": float(value)})
    return {"url": EXPLANATION_URL, "extension": parts} if parts else None


def resource_url(base_url: str, id: str) -> str:
    """``{base_url}/DocumentReference/{id}``."""
    return f"{base_url.rstrip('/')}/DocumentReference/{id}"


def searchset_bundle(
    entries: Sequence[SearchsetEntry],
    *,
    base_url: str,
    total: int | None,
    self_url: str,
    include_text: bool = False,
    next_url: str | None = None,
) -> dict[str, Any]:
    """A FHIR searchset Bundle (a dict ready for JSON) of the hits, in order.

    ``base_url``: the FHIR base (``https://host/fhir``); each entry's fullUrl and attachment url
    are ``{base_url}/DocumentReference/{id}``. Document text is left out unless ``include_text``
    (then each entry's ``text`` becomes the attachment's data). ``total`` None leaves it out.
    """
    out: list[dict[str, Any]] = []
    for entry in entries:
        url = resource_url(base_url, entry.id)
        resource = _resource(
            entry.metadata,
            id=entry.id,
            patient_id=entry.patient_id,
            date=entry.date,
            title=entry.title,
            last_updated=entry.last_updated,
        )
        resource["content"] = [
            {"attachment": _attachment(url, entry.title, entry.text if include_text else None)}
        ]
        extension = _explanation_extension(entry)
        if extension is not None:
            resource["extension"] = [extension]
        search: dict[str, Any] = {"mode": "match"}
        if entry.score is not None and math.isfinite(entry.score):
            search["score"] = float(entry.score)
        out.append({"fullUrl": url, "resource": resource, "search": search})
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = out
    return bundle


def document_reference(
    metadata: Mapping[str, Any],
    *,
    id: str,
    text: str | None,
    title: str | None = None,
    patient_id: str | None = None,
    date: datetime | None = None,
    last_updated: datetime | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The DocumentReference for ``GET /fhir/DocumentReference/{id}``: the stored elements and
    one text/plain attachment holding ``text`` as base64 data (None: no data, only the url)."""
    resource = _resource(
        metadata, id=id, patient_id=patient_id, date=date, title=title, last_updated=last_updated
    )
    url = resource_url(base_url, id) if base_url is not None else None
    resource["content"] = [{"attachment": _attachment(url, title, text)}]
    return resource


__all__ = [
    "BUNDLE_TYPES",
    "DOC_STATUSES",
    "EXPLANATION_URL",
    "SOURCE",
    "STATUSES",
    "FhirDocument",
    "FhirError",
    "FhirIssue",
    "FhirSearch",
    "SearchsetEntry",
    "document_reference",
    "entry_from_result",
    "explanation_text",
    "html_to_text",
    "issue_code",
    "operation_outcome",
    "outcome_for_error",
    "parse_document_reference",
    "parse_payload",
    "resource_url",
    "search_filters",
    "searchset_bundle",
]
