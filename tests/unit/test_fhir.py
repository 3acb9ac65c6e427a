"""medpg.service.fhir: DocumentReference in, search parameters to filters, Bundles out (no database)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.operationoutcome import OperationOutcome

from medpg.config import Settings
from medpg.documents import validate_documents
from medpg.errors import (
    AuthenticationError,
    InputError,
    MedpgError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from medpg.retrieval.types import Evidence, Explanation, Filters, SearchResult
from medpg.service import fhir
from medpg.service.fhir import FhirError, FhirIssue, SearchsetEntry

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
LOINC = "http://loinc.org"
CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
# A value that must never appear in an error message: the stand-in for PHI.
SECRET = "SECRETPHI4242"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return loaded


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def note(text: str = "Chest pain on exertion.", **overrides: Any) -> dict[str, Any]:
    """A minimal valid DocumentReference with a text/plain attachment."""
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": "doc-1",
        "status": "current",
        "subject": {"reference": "Patient/123"},
        "date": "2024-01-02T03:04:05Z",
        "content": [{"attachment": {"contentType": "text/plain", "data": b64(text)}}],
    }
    resource.update(overrides)
    return resource


def attachment(**fields: Any) -> dict[str, Any]:
    return note(content=[{"attachment": fields}])


def messages(error: FhirError) -> dict[str | None, str]:
    return {i.expression: i.message for i in error.issues}


def refused(obj: Any, *, parse: Callable[[Any], Any] = fhir.parse_payload) -> FhirError:
    with pytest.raises(FhirError) as caught:
        parse(obj)
    return caught.value


def expressions(error: FhirError) -> list[str | None]:
    return [i.expression for i in error.issues]


def assert_private(error: FhirError) -> None:
    assert SECRET not in str(error)
    assert SECRET not in json.dumps(fhir.operation_outcome(error.issues))


# --- parsing: valid resources ------------------------------------------------------------------


def test_us_core_progress_note_becomes_a_document_with_the_metadata_layout() -> None:
    [doc] = fhir.parse_payload(fixture("progress-note.json"))
    assert doc.id == "note-1"
    assert doc.title == "Cardiology follow-up"
    assert doc.text == "Patient reports chest pain on exertion.\nStarted metoprolol 25 mg."
    assert doc.patient_id == "123"
    assert doc.date == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    stored = doc.metadata["fhir"]
    assert stored["resourceType"] == "DocumentReference"
    assert stored["id"] == "note-1"
    assert stored["status"] == "current"
    assert stored["docStatus"] == "final"
    assert stored["subject"] == {"reference": "Patient/123"}
    assert stored["date"] == "2024-03-05T14:30:00Z"
    assert stored["type"]["coding"][0]["code"] == "11506-3"
    assert stored["category"][0]["coding"][0]["code"] == "clinical-note"
    assert stored["identifier"][0]["system"] == "urn:ietf:rfc:3986"
    assert stored["context"]["encounter"] == [{"reference": "Encounter/enc-9"}]
    assert stored["author"] == [{"reference": "Practitioner/dr-a"}]
    assert "content" not in stored and "meta" not in stored  # attachments are the body, not metadata
    assert doc.metadata["fhir_tokens"] == {
        "type": [f"{LOINC}|11506-3", "11506-3", f"{LOINC}|"],
        "category": [f"{CATEGORY_SYSTEM}|clinical-note", "clinical-note", f"{CATEGORY_SYSTEM}|"],
        "status": ["current"],
    }


def test_to_row_is_what_medpg_ingest_validation_accepts(make_settings: Callable[..., Settings]) -> None:
    docs = fhir.parse_payload(fixture("transaction-bundle.json"))
    rows = [d.to_row() for d in docs]
    assert set(rows[0]) == {"_id", "title", "text", "metadata", "patient_id", "date"}
    records = validate_documents(make_settings(), fhir.SOURCE, rows)
    for doc, record in zip(docs, records, strict=True):
        assert record.external_id == doc.id
        assert record.title == doc.title
        assert record.body == doc.text
        assert record.metadata == doc.metadata
        assert record.patient_id == doc.patient_id
        assert record.document_date == doc.date
    no_date = fhir.parse_document_reference(note(date=None, subject=None))
    assert no_date.to_row()["date"] is None and no_date.to_row()["patient_id"] is None
    assert validate_documents(make_settings(), "fhir", [no_date.to_row()])[0].document_date is None


def test_html_attachment_is_stripped_to_text_with_paragraph_breaks() -> None:
    [doc] = fhir.parse_payload(fixture("discharge-html.json"))
    assert doc.text == (
        "Discharge summary\n\n"
        "Admitted with pneumonia.\n\n"
        "Treated with ceftriaxone & azithromycin.\nAfebrile since day 3.\n\n"
        "Follow up in 2 weeks\nRepeat chest X-ray"
    )
    assert "alert" not in doc.text and "color" not in doc.text and "Discharge\n" not in doc.text
    assert doc.patient_id == "456"  # an absolute URL ending in Patient/456
    assert doc.title == "Discharge summary"  # no description: the type's display
    assert doc.date == datetime(2023, 11, 20, 9, tzinfo=timezone(timedelta(hours=1)))


def test_html_to_text_handles_pre_tables_entities_and_fragments() -> None:
    markup = (
        "<div>Vitals&nbsp;stable &lt;3&gt;</div><table><tr><th>BP</th><td>120/80</td></tr>"
        "<tr><th>HR</th><td>72</td></tr></table><pre>  line 1\n  line 2</pre>"
        "<!-- a comment --><noscript>no</noscript><template>hidden</template><p>end</p>"
    )
    assert fhir.html_to_text(markup) == "Vitals stable <3>\n\nBP 120/80\nHR 72\n\nline 1\nline 2\n\nend"
    assert fhir.html_to_text("plain   words\n\n\n\nwrapped") == "plain words wrapped"
    assert fhir.html_to_text("<p>one<br/>two</p><p>three</p>") == "one\ntwo\n\nthree"


def test_contained_binary_attachment_is_read() -> None:
    [doc] = fhir.parse_payload(fixture("contained-binary.json"))
    assert doc.text == "Contained binary note: no acute distress."
    assert doc.title == ""  # neither description nor a type text/display
    assert doc.metadata["fhir_tokens"]["status"] == ["superseded"]
    assert doc.metadata["fhir_tokens"]["category"] == []


def test_several_attachments_are_joined_with_blank_lines() -> None:
    resource = note(
        content=[
            {"attachment": {"contentType": "text/plain", "data": b64("First part.\n")}},
            {"attachment": {"contentType": "text/html", "data": b64("<p>Second <i>part</i>.</p>")}},
            {"attachment": {"contentType": "text/plain", "data": b64("   ")}},  # readable, empty: skipped
            {"attachment": {"contentType": "text/plain", "url": "#bin"}},
        ],
        contained=[
            {"resourceType": "Binary", "id": "bin", "contentType": "text/plain", "data": b64("Third.")}
        ],
    )
    assert fhir.parse_document_reference(resource).text == "First part.\n\nSecond part.\n\nThird."


@pytest.mark.parametrize(
    ("content_type", "data", "text"),
    [
        ("text/plain; charset=iso-8859-1", "Caf\xe9 au lait".encode("latin-1"), "Caf\xe9 au lait"),
        ('text/plain;charset="UTF-8"', "Kaffee \u2615".encode(), "Kaffee \u2615"),
        ("TEXT/PLAIN", b"\xef\xbb\xbfwith a BOM", "with a BOM"),
        ("text/plain", b"crlf\r\nlines\rhere", "crlf\nlines\nhere"),
        ("text/html; charset=windows-1252", b"<p>\x93quoted\x94</p>", "\u201cquoted\u201d"),
    ],
)
def test_charsets_and_line_ends(content_type: str, data: bytes, text: str) -> None:
    doc = fhir.parse_document_reference(attachment(contentType=content_type, data=b64(data)))
    assert doc.text == text


def test_base64_with_line_breaks_is_accepted() -> None:
    encoded = b64("A long note " * 20)
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    doc = fhir.parse_document_reference(attachment(contentType="text/plain", data=wrapped))
    assert doc.text == ("A long note " * 20).strip()


def test_title_comes_from_description_then_type_text_then_display() -> None:
    concept = {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}], "text": "Note"}
    assert fhir.parse_document_reference(note(description="Visit", type=concept)).title == "Visit"
    assert fhir.parse_document_reference(note(type=concept)).title == "Note"
    del concept["text"]
    assert fhir.parse_document_reference(note(type=concept)).title == "Progress note"
    assert fhir.parse_document_reference(note()).title == ""


def test_codings_without_a_system_give_bare_and_bar_tokens() -> None:
    doc = fhir.parse_document_reference(
        note(type={"coding": [{"code": "local-1"}, {"system": "urn:x"}]}, category=[{"text": "free text"}])
    )
    assert doc.metadata["fhir_tokens"]["type"] == ["local-1", "|local-1", "urn:x|"]
    assert doc.metadata["fhir_tokens"]["category"] == []


@pytest.mark.parametrize(
    ("reference", "patient"),
    [
        ("Patient/123", "123"),
        ("Patient/a.b-C", "a.b-C"),
        ("https://ehr.example.org/fhir/Patient/77", "77"),
        ("Patient/9/_history/2", "9"),
    ],
)
def test_patient_references(reference: str, patient: str) -> None:
    assert fhir.parse_document_reference(note(subject={"reference": reference})).patient_id == patient


def test_put_id_fills_a_missing_id_and_must_match_a_given_one() -> None:
    resource = note()
    del resource["id"]
    assert fhir.parse_document_reference(resource, id="from-url").id == "from-url"
    assert fhir.parse_document_reference(note(), id="doc-1").id == "doc-1"
    error = refused(note(), parse=lambda o: fhir.parse_document_reference(o, id="other"))
    assert expressions(error) == ["DocumentReference.id"]


@pytest.mark.parametrize("bundle_type", ["batch", "transaction", "collection"])
def test_bundle_types_accepted(bundle_type: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "entry": [{"resource": note(id="a")}, {"resource": note("Second.", id="b")}],
    }
    assert [(d.id, d.text) for d in fhir.parse_payload(bundle)] == [
        ("a", "Chest pain on exertion."),
        ("b", "Second."),
    ]


def test_transaction_bundle_fixture() -> None:
    docs = fhir.parse_payload(fixture("transaction-bundle.json"))
    assert [d.id for d in docs] == ["note-1", "note-html", "note-contained"]
    assert [d.patient_id for d in docs] == ["123", "456", "123"]


# --- parsing: refusals -------------------------------------------------------------------------


def test_fhir_error_is_an_input_error_with_http_422() -> None:
    error = refused(note(status=None))
    assert isinstance(error, InputError)
    assert error.http_status == 422
    assert expressions(error) == ["DocumentReference.status"]
    assert "DocumentReference.status: is required" in str(error)


def test_missing_id_is_refused() -> None:
    resource = note()
    del resource["id"]
    error = refused(resource)
    assert expressions(error) == ["DocumentReference.id"]
    assert error.issues[0].code == "required"


@pytest.mark.parametrize("bad_id", ["a" * 65, f"{SECRET} x"])
def test_bad_ids_are_refused(bad_id: str) -> None:
    error = refused(note(id=bad_id))
    assert expressions(error) == ["DocumentReference.id"]
    assert_private(error)


def test_pydantic_errors_name_the_element_and_never_quote_the_value() -> None:
    resource = note(date=f"{SECRET}-not-a-date", extraElement=SECRET)
    resource["content"][0]["attachment"]["contentType"] = 42
    resource["type"] = {"coding": [{"system": 7, "code": SECRET}]}
    error = refused(resource)
    assert messages(error) == {
        "DocumentReference.content[0].attachment.contentType": "must be a string, got a number",
        "DocumentReference.date": "is not a valid FHIR instant",
        "DocumentReference.extraElement": "is not an element FHIR R4B defines here",
        "DocumentReference.type.coding[0].system": "must be a string, got a number",
    }
    assert_private(error)


def test_structure_errors_inside_elements() -> None:
    error = refused(note(category={"text": "not a list"}, subject=5, context={"period": {"start": SECRET}}))
    shown = messages(error)
    assert shown["DocumentReference.category"] == "must be a list (JSON array), got an object"
    assert shown["DocumentReference.subject"] == "must be a Reference object, got a number"
    assert shown["DocumentReference.context.period.start"] == "is not a valid FHIR dateTime"
    assert_private(error)


def test_bad_base64_names_the_data_element() -> None:
    for data in ["!!!not base64!!!", "aGVsbG8", "é"]:
        error = refused(attachment(contentType="text/plain", data=data))
        assert messages(error) == {"DocumentReference.content[0].attachment.data": "is not valid base64"}


def test_pdf_attachment_is_refused_naming_the_attachment() -> None:
    resource = note()
    resource["content"].append({"attachment": {"contentType": "application/pdf", "data": b64(b"%PDF-1.4")}})
    error = refused(resource)
    assert expressions(error) == ["DocumentReference.content[1].attachment"]
    assert "application/pdf" in error.issues[0].message
    assert error.issues[0].code == "not-supported"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"contentType": "text/plain", "url": "https://ehr.example.org/Binary/1"}, "attachment"),
        ({"contentType": "text/plain"}, "attachment"),
        ({"data": b64("no content type")}, "attachment.contentType"),
        ({"contentType": "text/plain", "url": "#missing"}, "attachment.url"),
        ({"contentType": "text/plain; charset=klingon", "data": b64("x")}, "attachment.contentType"),
        ({"contentType": "text/plain", "data": b64(b"\xff\xfe\xfa")}, "attachment.data"),
        ({"contentType": "text/plain", "data": b64("nul \x00 inside")}, "attachment.data"),
        ({"contentType": f"{SECRET}/weird", "data": b64("x")}, "attachment"),
    ],
)
def test_unreadable_attachments_are_issues_never_empty_text(fields: dict[str, Any], where: str) -> None:
    error = refused(attachment(**fields))
    assert expressions(error) == [f"DocumentReference.content[0].{where}"]


def test_contained_binary_problems_name_the_contained_element() -> None:
    resource = attachment(contentType="text/plain", url="#b")
    resource["contained"] = [{"resourceType": "Binary", "id": "b", "contentType": "text/plain", "data": "@@"}]
    assert expressions(refused(resource)) == ["DocumentReference.contained[0].data"]
    resource["contained"] = [
        {"resourceType": "Binary", "id": "b", "contentType": "application/pdf", "data": "QQ=="}
    ]
    assert expressions(refused(resource)) == ["DocumentReference.content[0].attachment"]
    resource["contained"] = [{"resourceType": "Binary", "id": "b", "contentType": "text/plain"}]
    assert expressions(refused(resource)) == ["DocumentReference.contained[0].data"]
    resource["contained"] = [{"resourceType": "NoSuchResource", "id": "b"}]
    assert expressions(refused(resource)) == ["DocumentReference.contained[0].resourceType"]


def test_content_without_text_is_refused() -> None:
    error = refused(attachment(contentType="text/html", data=b64("<script>only()</script>")))
    assert expressions(error) == ["DocumentReference.content"]
    assert "no text" in error.issues[0].message
    assert expressions(refused(note(content=[]))) == ["DocumentReference.content"]


@pytest.mark.parametrize(
    ("element", "value", "code"),
    [
        ("status", "draft", "code-invalid"),
        ("status", SECRET, "code-invalid"),
        ("docStatus", "done", "code-invalid"),
        ("status", "entered-in-error", "business-rule"),
        ("docStatus", "entered-in-error", "business-rule"),
    ],
)
def test_status_codes_are_checked(element: str, value: str, code: str) -> None:
    error = refused(note(**{element: value}))
    assert expressions(error) == [f"DocumentReference.{element}"]
    assert error.issues[0].code == code
    assert_private(error)


@pytest.mark.parametrize("status", ["current", "superseded"])
@pytest.mark.parametrize("doc_status", ["preliminary", "final", "amended", None])
def test_allowed_status_codes(status: str, doc_status: str | None) -> None:
    doc = fhir.parse_document_reference(note(status=status, docStatus=doc_status))
    assert doc.metadata["fhir"]["status"] == status
    assert doc.metadata["fhir"].get("docStatus") == doc_status


@pytest.mark.parametrize(
    "subject",
    [{"reference": "Group/1"}, {"reference": "#contained-patient"}, {"identifier": {"value": SECRET}}],
)
def test_subject_must_be_a_patient_reference(subject: dict[str, Any]) -> None:
    error = refused(note(subject=subject))
    assert expressions(error) == ["DocumentReference.subject.reference"]
    assert_private(error)


def test_nul_characters_anywhere_are_refused() -> None:
    error = refused(note(description="a\x00b", identifier=[{"value": "x\x00"}]))
    assert set(expressions(error)) == {
        "DocumentReference.description",
        "DocumentReference.identifier[0].value",
    }


def test_payload_must_be_a_document_reference_or_bundle() -> None:
    assert expressions(refused({"resourceType": "Patient", "id": "p"})) == ["resourceType"]
    assert expressions(refused({"id": "x"})) == ["resourceType"]
    assert expressions(refused([note()])) == [None]
    error = refused({"resourceType": SECRET})
    assert_private(error)


def test_absurdly_nested_input_is_an_issue_not_a_crash() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5000):
        inner["extension"] = [{"url": "x"}]
        inner = inner["extension"][0]
    assert expressions(refused(note(extension=[deep]))) == [None]


def test_bundle_of_another_resource_type_names_the_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": note()}, {"resource": {"resourceType": "Patient", "id": "p"}}],
    }
    error = refused(bundle)
    assert expressions(error) == ["Bundle.entry[1].resource"]
    assert "Patient" in error.issues[0].message


def test_broken_resource_in_a_bundle_names_the_entry_element() -> None:
    broken = note(id="c")
    del broken["status"]
    broken["content"][0]["attachment"]["data"] = "%%%"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": note(id="a")}, {"resource": note(id="b")}, {"resource": broken}],
    }
    error = refused(bundle)
    assert expressions(error) == ["Bundle.entry[2].resource.status"]
    broken["status"] = "current"
    assert expressions(refused(bundle)) == ["Bundle.entry[2].resource.content[0].attachment.data"]


def test_bundle_problems() -> None:
    def bundle(**fields: Any) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": note()}]} | fields

    assert expressions(refused(bundle(type="searchset"))) == ["Bundle.type"]
    assert expressions(refused(bundle(entry=[]))) == ["Bundle.entry"]
    assert expressions(refused(bundle(entry=[{"fullUrl": "urn:uuid:1"}]))) == ["Bundle.entry[0].resource"]
    assert expressions(refused(bundle(entry=[{"resource": "text"}]))) == ["Bundle.entry[0].resource"]
    twice = bundle(entry=[{"resource": note()}, {"resource": note("Other text.")}])
    assert expressions(refused(twice)) == ["Bundle.entry[1].resource.id"]
    delete = bundle(
        entry=[{"resource": note(), "request": {"method": "DELETE", "url": "DocumentReference/doc-1"}}]
    )
    assert expressions(refused(delete)) == ["Bundle.entry[0].request.method"]
    wrong_url = bundle(
        entry=[{"resource": note(), "request": {"method": "PUT", "url": "DocumentReference/x"}}]
    )
    assert expressions(refused(wrong_url)) == ["Bundle.entry[0].request.url"]
    shell = bundle(unknownBundleElement=1)
    assert expressions(refused(shell)) == ["Bundle.unknownBundleElement"]
    many = bundle(entry=[{"resource": {"resourceType": "Patient"}}] * 150)
    error = refused(many)
    assert len(error.issues) == fhir.MAX_ISSUES + 1 and error.issues[-1].expression is None


def test_every_issue_in_a_bundle_is_reported_together() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": note(id="a", status="bogus")},
            {"resource": note(id="b")},
            {"resource": attachment(contentType="application/pdf", data="QQ==") | {"id": "c"}},
        ],
    }
    assert expressions(refused(bundle)) == [
        "Bundle.entry[0].resource.status",
        "Bundle.entry[2].resource.content[0].attachment",
    ]


# --- search parameters -------------------------------------------------------------------------


def search(**params: str | list[str]) -> fhir.FhirSearch:
    return fhir.search_filters(params)


def search_refused(**params: str | list[str]) -> FhirError:
    with pytest.raises(FhirError) as caught:
        fhir.search_filters(params)
    return caught.value


def jsonb_contains(value: Any, wanted: Any) -> bool:
    """PostgreSQL jsonb @> for the shapes medpg's metadata takes (objects, arrays, scalars)."""
    if isinstance(wanted, dict):
        return isinstance(value, dict) and all(
            k in value and jsonb_contains(value[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(value, list) and all(any(jsonb_contains(x, w) for x in value) for w in wanted)
    return bool(value == wanted)


@pytest.fixture
def stored() -> dict[str, dict[str, Any]]:
    """Metadata of the fixture documents, by id."""
    return {d.id: d.metadata for d in fhir.parse_payload(fixture("transaction-bundle.json"))}


def found(s: fhir.FhirSearch, stored: dict[str, dict[str, Any]]) -> list[str]:
    """Ids whose metadata passes both the SQL containment and the Python post-filter."""
    containment = s.metadata_containment()
    return [
        i
        for i, m in stored.items()
        if (containment is None or jsonb_contains(m, containment)) and s.matches(m)
    ]


def test_defaults() -> None:
    s = search()
    assert (s.patients, s.text, s.count, s.date_from, s.date_to, s.metadata_any, s.empty) == (
        None, None, 10, None, None, (), False,
    )  # fmt: skip
    assert s.metadata_containment() is None
    assert s.to_filters() == Filters(sources=("fhir",))


def test_us_core_patient() -> None:
    s = search(patient="123")
    assert s.patients == ("123",)
    assert s.to_filters() == Filters(sources=("fhir",), patient_ids=("123",))


@pytest.mark.parametrize(
    "params",
    [
        {"patient": "Patient/123"},
        {"patient": "https://ehr.example.org/fhir/Patient/123"},
        {"subject": "Patient/123"},
        {"subject:Patient": "123"},
        {"patient": ["123"]},
    ],
)
def test_patient_forms(params: dict[str, str | list[str]]) -> None:
    assert fhir.search_filters(params).patients == ("123",)


def test_several_patients_are_any_of_them() -> None:
    assert search(patient="1,Patient/2").patients == ("1", "2")
    assert search(patient=["1", "2", "1"]).patients == ("1", "2")
    both = search(patient="1,2", subject="Patient/2,3")
    assert both.patients == ("2",) and not both.empty
    disjoint = search(patient="1", subject="2")
    assert disjoint.empty


def test_us_core_patient_and_category(stored: dict[str, dict[str, Any]]) -> None:
    s = search(patient="123", category=f"{CATEGORY_SYSTEM}|clinical-note")
    assert s.metadata_containment() == {"fhir_tokens": {"category": [f"{CATEGORY_SYSTEM}|clinical-note"]}}
    assert not s.needs_post_filter
    filters = s.to_filters()
    assert filters.patient_ids == ("123",) and filters.sources == ("fhir",)
    assert filters.metadata == {"fhir_tokens": {"category": [f"{CATEGORY_SYSTEM}|clinical-note"]}}
    assert found(s, stored) == ["note-1", "note-html"]  # the patient filter is SQL's part
    assert found(search(category="clinical-note"), stored) == ["note-1", "note-html"]
    assert found(search(category="|clinical-note"), stored) == []  # these codings have a system
    assert found(search(category=f"{CATEGORY_SYSTEM}|"), stored) == ["note-1", "note-html"]


def test_us_core_patient_category_and_date(stored: dict[str, dict[str, Any]]) -> None:
    s = search(patient="Patient/123", category="clinical-note", date=["ge2024-01", "lt2025"])
    assert s.patients == ("123",)
    assert s.date_from == datetime(2024, 1, 1, tzinfo=UTC)
    assert s.date_to == datetime(2025, 1, 1, tzinfo=UTC)
    filters = s.to_filters()
    assert (filters.date_from, filters.date_to) == (s.date_from, s.date_to)
    assert filters.metadata == {"fhir_tokens": {"category": ["clinical-note"]}}


def test_us_core_patient_and_type(stored: dict[str, dict[str, Any]]) -> None:
    s = search(patient="123", type=f"{LOINC}|11506-3")
    assert s.metadata_containment() == {"fhir_tokens": {"type": [f"{LOINC}|11506-3"]}}
    assert found(s, stored) == ["note-1"]
    assert found(search(type="11506-3"), stored) == ["note-1"]
    assert found(search(type=f"{LOINC}|"), stored) == ["note-1", "note-html", "note-contained"]
    assert found(search(type="urn:other|11506-3"), stored) == []


def test_comma_is_or_and_needs_the_post_filter(stored: dict[str, dict[str, Any]]) -> None:
    s = search(patient="123", type=f"{LOINC}|11506-3,{LOINC}|34117-2", category="clinical-note")
    assert s.needs_post_filter
    assert s.metadata_any == (
        ({"fhir_tokens": {"category": ["clinical-note"]}},),
        ({"fhir_tokens": {"type": [f"{LOINC}|11506-3"]}}, {"fhir_tokens": {"type": [f"{LOINC}|34117-2"]}}),
    )
    # SQL filters on what every match must have; matches() applies the alternatives.
    assert s.metadata_containment() == {"fhir_tokens": {"category": ["clinical-note"]}}
    assert found(s, stored) == ["note-1"]
    assert found(search(type="11506-3,34117-2"), stored) == ["note-1", "note-contained"]


def test_repeated_token_parameters_must_all_hold(stored: dict[str, dict[str, Any]]) -> None:
    s = search(type=["11506-3", f"{LOINC}|11506-3"], category="clinical-note", status="current")
    assert s.metadata_containment() == {
        "fhir_tokens": {
            "category": ["clinical-note"],
            "type": ["11506-3", f"{LOINC}|11506-3"],
            "status": ["current"],
        }
    }
    assert found(s, stored) == ["note-1"]
    assert found(search(type=["11506-3", "34117-2"]), stored) == []


def test_escaped_commas_and_bars_in_tokens() -> None:
    s = search(type=r"urn:a\,b|x\|y")
    assert s.metadata_containment() == {"fhir_tokens": {"type": ["urn:a,b|x|y"]}}


def test_status_and_id(stored: dict[str, dict[str, Any]]) -> None:
    assert found(search(status="superseded"), stored) == ["note-contained"]
    assert found(search(status=f"{fhir.STATUS_SYSTEM}|current"), stored) == ["note-1", "note-html"]
    both = search(status="current,superseded")
    assert both.needs_post_filter and len(found(both, stored)) == 3
    assert search(status=["current", "superseded"]).empty
    assert found(search(status="entered-in-error"), stored) == []
    error = search_refused(status="final")
    assert expressions(error) == ["status"] and error.issues[0].code == "code-invalid"
    ids = search(_id="note-1,note-html")
    assert ids.ids == ("note-1", "note-html")
    assert found(ids, stored) == ["note-1", "note-html"]
    assert search(_id="note-1").metadata_containment() == {"fhir": {"id": "note-1"}}
    assert search(_id=["a", "b"]).empty


def test_full_text_query() -> None:
    assert search(_text="  chest pain  ").text == "chest pain"
    assert search(_content="metoprolol").text == "metoprolol"
    assert expressions(search_refused(_text="a", _content="b")) == ["_content"]
    assert expressions(search_refused(_text=["a", "b"])) == ["_text"]
    assert expressions(search_refused(_text="   ")) == ["_text"]


@pytest.mark.parametrize(
    ("value", "count", "code"),
    [("1", 1, None), ("100", 100, None), ("0", None, "invalid"), ("101", None, "too-costly"),
     ("ten", None, "invalid"), ("-3", None, "invalid")],
)  # fmt: skip
def test_count(value: str, count: int | None, code: str | None) -> None:
    if count is not None:
        assert search(_count=value).count == count
        return
    error = search_refused(_count=value)
    assert expressions(error) == ["_count"] and error.issues[0].code == code


def day(y: int, m: int, d: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(y, m, d, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "date_from", "date_to"),
    [
        ("2024-03-05", day(2024, 3, 5), day(2024, 3, 6)),
        ("eq2024-03-05", day(2024, 3, 5), day(2024, 3, 6)),
        ("eq2024-02", day(2024, 2, 1), day(2024, 3, 1)),
        ("eq2023-02", day(2023, 2, 1), day(2023, 3, 1)),
        ("eq2024-12", day(2024, 12, 1), day(2025, 1, 1)),
        ("2024", day(2024, 1, 1), day(2025, 1, 1)),
        ("ge2024-03-05", day(2024, 3, 5), None),
        ("gt2024-03-05", day(2024, 3, 6), None),
        ("le2024-03-05", None, day(2024, 3, 6)),
        ("lt2024-03-05", None, day(2024, 3, 5)),
        ("gt2024", day(2025, 1, 1), None),
        ("lt2024-03", None, day(2024, 3, 1)),
        ("2024-03-05T14:30:00Z", day(2024, 3, 5, 14, 30), day(2024, 3, 5, 14, 30, 1)),
        ("ge2024-03-05T14:30:00+02:00", day(2024, 3, 5, 12, 30), None),
        ("2024-03-05T14:30Z", day(2024, 3, 5, 14, 30), day(2024, 3, 5, 14, 31)),
        ("2024-03-05T14:30:00.5Z", day(2024, 3, 5, 14, 30, 0, 500000), day(2024, 3, 5, 14, 30, 0, 600000)),
        (
            "2024-03-05T14:30:00.123456Z",
            day(2024, 3, 5, 14, 30, 0, 123456),
            day(2024, 3, 5, 14, 30, 0, 123457),
        ),
        ("2024-03-05T14:30:00", day(2024, 3, 5, 14, 30), day(2024, 3, 5, 14, 30, 1)),  # no zone: UTC
        ("le9999-12-31", None, None),
        ("ge9999", day(9999, 1, 1), None),
    ],
)
def test_date_prefixes_and_precisions(
    value: str, date_from: datetime | None, date_to: datetime | None
) -> None:
    s = search(date=value)
    assert s.date_from == date_from
    assert s.date_to == date_to
    filters = s.to_filters()  # Filters accepts them (UTC)
    assert filters.date_from == date_from and filters.date_to == date_to


def test_dates_within_an_instant_with_offset_compare_in_utc() -> None:
    s = search(date="2024-03-05T00:30:00-05:00")
    assert s.to_filters().date_from == day(2024, 3, 5, 5, 30)


def test_repeated_dates_intersect() -> None:
    s = search(date=["ge2024-01-01", "le2024-06-30", "gt2024-02-01"])
    assert (s.date_from, s.date_to) == (day(2024, 2, 2), day(2024, 7, 1))
    assert not s.empty
    assert search(date=["ge2025", "lt2024"]).empty
    assert search(date=["lt2024-03-05", "ge2024-03-05"]).empty
    assert search(date="gt9999").empty


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("ne2024-01-01", "not-supported"),
        ("sa2024", "not-supported"),
        ("ap2024", "not-supported"),
        ("2024-01-01,2024-02-01", "not-supported"),
        ("2024-13-01", "invalid"),
        ("2024-02-30", "invalid"),
        ("yesterday", "invalid"),
        ("24-01-01", "invalid"),
        ("2024-01-01T25:00:00Z", "invalid"),
        ("2024-01-01T10:00:00+15:00", "invalid"),
        (f"ge{SECRET}", "invalid"),
    ],
)
def test_bad_dates_are_refused(value: str, code: str) -> None:
    error = search_refused(date=value)
    assert expressions(error) == ["date"] and error.issues[0].code == code
    assert_private(error)


def test_unknown_parameters_are_refused_by_name() -> None:
    error = search_refused(patient="1", period="2024", author="Practitioner/1")
    assert expressions(error) == ["period", "author"]
    assert all(i.code == "not-supported" for i in error.issues)
    assert "period" in error.issues[0].message
    outcome = fhir.operation_outcome(error.issues)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["expression"] == ["period"]
    assert expressions(search_refused(**{"category:text": "note"})) == ["category:text"]
    assert expressions(search_refused(**{"patient.identifier": "x"})) == ["patient.identifier"]
    assert_private(search_refused(**{f"{SECRET} with space": "1"}))


def test_format_and_summary_are_ignored() -> None:
    assert search(patient="1", _format="json", _summary="true") == search(patient="1")


def test_bad_patient_values_are_refused_without_the_value() -> None:
    for value in [f"{SECRET} x", "Group/1", "", "1,,2", "Patient/"]:
        error = search_refused(patient=value)
        assert expressions(error) == ["patient"]
        assert_private(error)
    assert expressions(search_refused(type="")) == ["type"]
    assert expressions(search_refused(category="|")) == ["category"]
    assert expressions(search_refused(_id="a b")) == ["_id"]
    assert expressions(search_refused(patient="1\x00")) == ["patient"]


def test_several_bad_parameters_are_reported_together() -> None:
    error = search_refused(date="ne2024", _count="1000", status="x")
    assert sorted(str(e) for e in expressions(error)) == ["_count", "date", "status"]


# --- searchset Bundle and DocumentReference ----------------------------------------------------

BASE = "https://medpg.example.org/fhir"


def entries(stored: dict[str, dict[str, Any]]) -> list[SearchsetEntry]:
    return [
        SearchsetEntry(
            id="note-1",
            metadata=stored["note-1"],
            score=0.91,
            explanation="dense: rank 1; lexical: rank 2",
            evidence="chest pain on exertion",
            patient_id="123",
            date=day(2024, 3, 5, 14, 30),
            title="Cardiology follow-up",
            components={
                "dense_score": 0.8,
                "lexical_rank": 2,
                "rerank_score": None,
                "fused_score": float("nan"),
            },
            text="Patient reports chest pain on exertion.",
        ),
        SearchsetEntry(id="note-html", metadata=stored["note-html"], score=0.5),
    ]


def explanation_of(resource: dict[str, Any]) -> dict[str, Any]:
    [ext] = [e for e in resource.get("extension", []) if e["url"] == fhir.EXPLANATION_URL]
    return {sub["url"]: next(v for k, v in sub.items() if k.startswith("value")) for sub in ext["extension"]}


def test_searchset_bundle_validates_with_r4b(stored: dict[str, dict[str, Any]]) -> None:
    bundle = fhir.searchset_bundle(
        entries(stored), base_url=BASE + "/", total=2, self_url=f"{BASE}/DocumentReference?patient=123"
    )
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "searchset" and parsed.total == 2
    assert bundle["link"] == [{"relation": "self", "url": f"{BASE}/DocumentReference?patient=123"}]
    first, second = bundle["entry"]
    assert first["fullUrl"] == f"{BASE}/DocumentReference/note-1"
    assert first["search"] == {"mode": "match", "score": 0.91}
    resource = first["resource"]
    DocumentReference.model_validate(resource)
    assert resource["id"] == "note-1"
    for name in (
        "status",
        "docStatus",
        "type",
        "category",
        "subject",
        "date",
        "identifier",
        "context",
        "description",
    ):
        assert resource[name] == stored["note-1"]["fhir"][name]
    [content] = resource["content"]
    assert content["attachment"]["url"] == f"{BASE}/DocumentReference/note-1"
    assert content["attachment"]["contentType"].startswith("text/plain")
    assert "data" not in content["attachment"]  # no text in search results by default
    assert "Patient reports" not in json.dumps(bundle)
    assert explanation_of(resource) == {
        "explanation": "dense: rank 1; lexical: rank 2",
        "evidence": "chest pain on exertion",
        "dense_score": 0.8,
        "lexical_rank": 2,
    }
    assert "extension" not in second["resource"]  # nothing to explain
    assert second["search"] == {"mode": "match", "score": 0.5}


def test_searchset_bundle_with_text_and_paging(stored: dict[str, dict[str, Any]]) -> None:
    bundle = fhir.searchset_bundle(
        entries(stored)[:1], base_url=BASE, total=None, self_url="s", include_text=True, next_url="n"
    )
    Bundle.model_validate(bundle)
    assert "total" not in bundle
    assert bundle["link"] == [{"relation": "self", "url": "s"}, {"relation": "next", "url": "n"}]
    data = bundle["entry"][0]["resource"]["content"][0]["attachment"]["data"]
    assert base64.b64decode(data).decode() == "Patient reports chest pain on exertion."


def test_empty_searchset_validates() -> None:
    bundle = fhir.searchset_bundle([], base_url=BASE, total=0, self_url=f"{BASE}/DocumentReference")
    assert Bundle.model_validate(bundle).total == 0
    assert bundle["entry"] == []


def test_searchset_entry_without_fhir_metadata_is_rebuilt_from_the_row() -> None:
    entry = SearchsetEntry(
        id="csv-7", metadata={"specialty": "Cardiology"}, score=float("inf"), patient_id="9",
        date=datetime(2020, 5, 1, 8, 0), title="Imported note", last_updated=day(2024, 1, 1),
    )  # fmt: skip
    bundle = fhir.searchset_bundle([entry], base_url=BASE, total=1, self_url="s")
    Bundle.model_validate(bundle)
    resource = bundle["entry"][0]["resource"]
    assert resource["status"] == "current"
    assert resource["subject"] == {"reference": "Patient/9"}
    assert resource["date"] == "2020-05-01T08:00:00+00:00"
    assert resource["description"] == "Imported note"
    assert resource["meta"] == {"lastUpdated": "2024-01-01T00:00:00+00:00"}
    assert bundle["entry"][0]["search"] == {"mode": "match"}  # an infinite score is left out


def test_entry_from_result(stored: dict[str, dict[str, Any]]) -> None:
    result = SearchResult(
        rank=1,
        score=0.75,
        document_id=11,
        source="fhir",
        external_id="note-1",
        title="Cardiology follow-up",
        evidence=Evidence(chunk_id=3, char_start=0, char_end=20, text="chest pain on exertion"),
        explanation=Explanation(
            dense_rank=2,
            dense_score=0.81234,
            lexical_rank=1,
            lexical_score=7.5,
            matched_terms=("chest", "pain"),
            fused_score=0.0325,
            first_stage_rank=1,
            rerank_score=None,
        ),  # fmt: skip
        metadata=stored["note-1"],
        patient_id="123",
        document_date=day(2024, 3, 5, 14, 30),
    )
    entry = fhir.entry_from_result(result)
    assert entry.id == "note-1" and entry.score == 0.75 and entry.evidence == "chest pain on exertion"
    assert entry.explanation == (
        "dense: rank 2, score 0.8123; lexical: rank 1, score 7.5 (matched terms: chest, pain); "
        "fused score 0.0325; first-stage rank 1"
    )
    bundle = fhir.searchset_bundle([entry], base_url=BASE, total=1, self_url="s")
    Bundle.model_validate(bundle)
    shown = explanation_of(bundle["entry"][0]["resource"])
    assert shown["dense_score"] == 0.81234 and shown["lexical_rank"] == 1 and shown["first_stage_rank"] == 1
    assert "rerank_score" not in shown
    assert fhir.entry_from_result(result, evidence=False).evidence is None


def test_document_reference_round_trips(stored: dict[str, dict[str, Any]]) -> None:
    [original] = [d for d in fhir.parse_payload(fixture("transaction-bundle.json")) if d.id == "note-html"]
    resource = fhir.document_reference(
        original.metadata,
        id=original.id,
        text=original.text,
        title=original.title,
        patient_id=original.patient_id,
        date=original.date,
        base_url=BASE,
    )
    DocumentReference.model_validate(resource)
    attachment = resource["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]).decode() == original.text
    assert attachment["size"] == len(original.text.encode())
    assert attachment["url"] == f"{BASE}/DocumentReference/note-html"
    again = fhir.parse_document_reference(resource)
    assert (again.id, again.text, again.patient_id, again.date) == (
        original.id, original.text, original.patient_id, original.date,
    )  # fmt: skip
    assert again.metadata == original.metadata
    no_text = fhir.document_reference(original.metadata, id="note-html", text=None)
    assert "data" not in no_text["content"][0]["attachment"]


# --- OperationOutcome --------------------------------------------------------------------------


def test_operation_outcome_validates_with_r4b() -> None:
    outcome = fhir.operation_outcome(
        [
            FhirIssue("DocumentReference.status", "is required", code="required"),
            FhirIssue(None, "something else"),
        ]
    )
    OperationOutcome.model_validate(outcome)
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "is required",
                "expression": ["DocumentReference.status"],
            },
            {"severity": "error", "code": "invalid", "diagnostics": "something else"},
        ],
    }
    assert fhir.operation_outcome(FhirIssue("x", "y"))["issue"][0]["expression"] == ["x"]


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (NotFoundError("DocumentReference not found"), "not-found", 404),
        (PermissionDeniedError("the key lacks search"), "forbidden", 403),
        (AuthenticationError("no API key"), "login", 401),
        (PayloadTooLargeError("body over 16 MiB"), "too-long", 413),
        (InputError("bad input"), "invalid", 422),
    ],
)
def test_outcome_for_medpg_errors(error: MedpgError, code: str, status: int) -> None:
    outcome = fhir.outcome_for_error(error)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"] == [{"severity": "error", "code": code, "diagnostics": str(error)}]
    assert error.http_status == status


def test_outcome_for_fhir_error_and_unexpected_errors() -> None:
    error = refused(note(status="bogus"))
    outcome = fhir.outcome_for_error(error)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["expression"] == ["DocumentReference.status"]
    hidden = fhir.outcome_for_error(RuntimeError(f"psql said {SECRET}"))
    assert hidden["issue"] == [
        {"severity": "error", "code": "exception", "diagnostics": "internal server error"}
    ]


def test_fixtures_are_valid_r4b() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        obj = json.loads(path.read_text())
        model = Bundle if obj["resourceType"] == "Bundle" else DocumentReference
        model.model_validate(copy.deepcopy(obj))
