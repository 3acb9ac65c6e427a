"""Split documents into passages that fit the article encoder's window.

A document whose title and body fit the encoder's window (with its special tokens) is one
chunk. A longer body is cut into overlapping token windows; each chunk keeps the character
offsets of its passage in the body, so ``body[char_start:char_end] == chunk.text``.

Tokens are counted with ``MEDPG_CHUNK_TOKENIZER``: by default the BERT uncased WordPiece
tokenizer shipped with the packaged MiniLM model, so chunking is deterministic and works
offline. MedCPT's PubMedBERT vocabulary splits biomedical words into fewer pieces than the
general BERT vocabulary, so this count errs on the safe side (chunks are never longer than
the window); the encoder still truncates at its own limit.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from medpg.config import Settings
from medpg.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# [CLS] title [SEP] body [SEP]
PAIR_SPECIAL_TOKENS = 3


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int


def chunk_hash(title: str, text: str) -> bytes:
    """What a chunk's vector is made from: its title and passage (the article encoder's pair)."""
    return hashlib.sha256(title.encode() + b"\x1f" + text.encode()).digest()


@lru_cache(maxsize=4)
def load_tokenizer(name: str, offline: bool = True) -> Tokenizer:
    """A fast tokenizer without truncation or padding, used only to count tokens and find offsets.

    A directory with a ``tokenizer.json`` is read by the ``tokenizers`` library directly, which
    avoids importing transformers (and torch) in ingest-only processes.
    """
    if name == "packaged":
        from medpg.encoders.profiles import packaged_minilm_path

        name = str(packaged_minilm_path())
    tokenizer_file = Path(name) / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(tokenizer_file))
    else:
        from transformers import AutoTokenizer

        try:
            backend = AutoTokenizer.from_pretrained(
                name, local_files_only=offline, use_fast=True
            ).backend_tokenizer
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(
                f"cannot load the chunk tokenizer {name!r} (MEDPG_CHUNK_TOKENIZER): {exc}. "
                "Use 'packaged' or a local model directory."
            ) from None
    backend.no_truncation()
    backend.no_padding()
    return backend


# Words are runs of non-whitespace. BERT-style tokenizers split whitespace-separated words the same
# way in or out of context, so a word's token count can be cached. Their normaliser deletes control
# and format characters (Unicode category C*, except tab, newline and carriage return), some of which
# Python counts as whitespace: in a text that has any, those characters join the words around them.
_WORD = re.compile(r"\S+")
_CACHE_LIMIT = 500_000


def _is_deleted(ch: str) -> bool:
    return (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r") or ch == "\ufffd"


@lru_cache(maxsize=1)
def _deleted_chars() -> str:
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if _is_deleted(chr(cp)):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


@lru_cache(maxsize=1)
def _irregular_word() -> re.Pattern[str]:
    return re.compile(rf"(?:[^\s]|[{_deleted_chars()}])+")


# The ASCII characters the normaliser deletes; other characters are looked up by category, once each.
# (A single regex class of every deleted code point is a linear scan of thousands of ranges per
# character: ~1 ms per abstract.)
_ASCII_DELETED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_is_deleted_cached = lru_cache(maxsize=1 << 16)(_is_deleted)


def _is_irregular(text: str) -> bool:
    """Whether ``text`` holds a character BERT's normaliser deletes (so words must be joined)."""
    if _ASCII_DELETED.search(text) is not None:
        return True
    if text.isascii():
        return False
    return any(map(_is_deleted_cached, set(_NON_ASCII.findall(text))))


class _WordPieceCounter:
    """Word-piece counts per word, memoised: tokenizing every document in full costs ~400 us of CPU
    per NFCorpus abstract; looking words up costs a tenth of that (benchmarks/results/ingest.md)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, int] = {}

    def _fill(self, words: list[str]) -> None:
        cache = self.cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
            encodings = self.tokenizer.encode_batch_fast(missing, add_special_tokens=False)
            for word, enc in zip(missing, encodings, strict=True):
                cache[word] = len(enc.ids)

    def count(self, text: str) -> int:
        # Whitespace-separated words are counted whole (the tokenizer splits their punctuation the
        # same way in or out of context). Control and format characters, which BERT's normaliser
        # deletes and str.split() may treat as separators, make a text take the slower word regex
        # that joins the words around them.
        words = _irregular_word().findall(text) if _is_irregular(text) else text.split()
        try:
            return sum(map(self.cache.__getitem__, words))
        except KeyError:
            self._fill(words)
            return sum(map(self.cache.__getitem__, words))

    def spans(self, text: str) -> list[tuple[int, int, int]]:
        """(char_start, char_end, tokens) for each word of ``text``: chunk boundaries fall between them."""
        pattern = _irregular_word() if _is_irregular(text) else _WORD
        matches = [(m.start(), m.end(), m.group()) for m in pattern.finditer(text)]
        self._fill([w for _, _, w in matches])
        return [(a, b, self.cache[w]) for a, b, w in matches]


class Chunker:
    """Token-window chunking for a batch of documents.

    Windows are measured in tokens and cut between words, so a passage never starts or ends
    inside a word.
    """

    def __init__(self, tokenizer: Tokenizer, window: int, overlap: int, encoder_max_tokens: int) -> None:
        if not 0 <= overlap < window:
            raise ValueError(f"chunk overlap {overlap} must be in [0, {window})")
        self.tokenizer = tokenizer
        self.window = window
        self.overlap = overlap
        self.encoder_max_tokens = encoder_max_tokens
        self._counter = (
            _WordPieceCounter(tokenizer)
            if type(tokenizer.pre_tokenizer).__name__ == "BertPreTokenizer"
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Chunker:
        return cls(
            load_tokenizer(settings.chunk_tokenizer, settings.hf_offline),
            settings.chunk_tokens,
            settings.chunk_overlap,
            settings.article_max_tokens,
        )

    def token_spans(self, text: str) -> list[tuple[int, int, int]]:
        """The words of ``text`` as (char_start, char_end, token count)."""
        if self._counter is not None:
            return self._counter.spans(text)
        # Any other tokenizer: every token is its own span.
        return [(a, b, 1) for a, b in self.tokenizer.encode(text, add_special_tokens=False).offsets]

    def count_tokens(self, text: str) -> int:
        if self._counter is not None:
            return self._counter.count(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chunk(self, title: str, body: str) -> list[Chunk]:
        """The chunks of one document."""
        total = self.count_tokens(body)
        if total + self.count_tokens(title) + PAIR_SPECIAL_TOKENS <= self.encoder_max_tokens or (
            total <= self.window
        ):
            return [Chunk(0, body, 0, len(body), total)]
        return self._split(body, self.token_spans(body))

    def chunk_many(self, titles: Sequence[str], bodies: Sequence[str]) -> list[list[Chunk]]:
        """Chunks for each (title, body), in input order."""
        return [self.chunk(t, b) for t, b in zip(titles, bodies, strict=True)]

    def _split(self, body: str, spans: list[tuple[int, int, int]]) -> list[Chunk]:
        chunks: list[Chunk] = []
        start, n_spans = 0, len(spans)
        while True:
            end, tokens = start, 0
            while end < n_spans and (end == start or tokens + spans[end][2] <= self.window):
                tokens += spans[end][2]
                end += 1
            # The first window starts at 0 and the last ends at the end of the body, so the chunks
            # cover every character; inner boundaries fall between words.
            c_start = 0 if start == 0 else spans[start][0]
            c_end = len(body) if end == n_spans else spans[end - 1][1]
            chunks.append(Chunk(len(chunks), body[c_start:c_end], c_start, c_end, tokens))
            if end == n_spans:
                return chunks
            # Step back over up to `overlap` tokens so neighbouring windows share context.
            nxt, shared = end, 0
            while nxt - 1 > start and shared + spans[nxt - 1][2] <= self.overlap:
                nxt -= 1
                shared += spans[nxt][2]
            start = nxt
