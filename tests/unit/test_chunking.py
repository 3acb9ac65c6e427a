"""Chunking: windows fit the encoder, overlap, and their offsets reproduce the text exactly."""

from __future__ import annotations

import orjson
import pytest

from medpg.chunking import Chunker, load_tokenizer
from medpg.config import Settings
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker.from_settings(Settings(_env_file=None, model_profile="minilm"))  # type: ignore[call-arg]


def _reference_count(text: str) -> int:
    return len(load_tokenizer("packaged").encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize(
    "text",
    [
        "Statin use and breast cancer survival",
        "p<0.05), (n=3) -- 5mg/kg; IL-6/TNF-\u03b1!",
        "caf\u00e9 na\u00efve \u00c9COLE",  # accents stripped by the uncased normaliser
        "\u4e2d\u6587 characters are split one by one",
        "zero\u200bwidth and vertical\x0btab and nbsp\u00a0here",  # deleted / separator characters
        "soft\u00adhy\u00adphen\x00nul \ufffd replacement",
        # characters Python splits on that the normaliser deletes, so the words around them join
        "to\x85day",
        "to\x1cday",
        "private\U000f0000use and unassigned\U000e0fffplane",
        "only an nbsp\u00a0and \u00e9 accents",
        "",
    ],
)
def test_token_counts_equal_the_tokenizer(chunker: Chunker, text: str) -> None:
    assert chunker.count_tokens(text) == _reference_count(text)


def test_short_document_is_one_chunk(chunker: Chunker) -> None:
    (chunk,) = chunker.chunk("Title", "A short abstract about statins.")
    assert (chunk.ordinal, chunk.char_start, chunk.char_end) == (0, 0, len("A short abstract about statins."))
    assert chunk.token_count == _reference_count("A short abstract about statins.")


def test_long_document_windows_overlap_and_cover_the_text(chunker: Chunker) -> None:
    body = " ".join(f"word{i % 97} finding-{i}." for i in range(2000))
    chunks = chunker.chunk("A title", body)
    assert len(chunks) > 3
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(body)
    for c in chunks:
        assert body[c.char_start : c.char_end] == c.text
        assert c.token_count <= chunker.window
        assert c.token_count == _reference_count(c.text)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.char_start < a.char_end, "neighbouring windows share an overlap"
        assert b.char_start > a.char_start
        assert body[b.char_start - 1].isspace(), "windows start between words"


def test_real_clinical_notes_round_trip(chunker: Chunker) -> None:
    notes = DATA_DIR / "mtsamples" / "notes.jsonl"
    split = 0
    for line in notes.read_bytes().splitlines():
        doc = orjson.loads(line)
        chunks = chunker.chunk(doc["title"], doc["text"])
        split += len(chunks) > 1
        assert [c.ordinal for c in chunks] == list(range(len(chunks)))
        for c in chunks:
            assert doc["text"][c.char_start : c.char_end] == c.text
        covered = set()
        for c in chunks:
            covered.update(range(c.char_start, c.char_end))
        assert covered == set(range(len(doc["text"])))
    assert split > 20, "many notes are longer than one 512-token window"
