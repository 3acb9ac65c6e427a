"""Synthetic medical corpora of any size, recombined from the real text in ``../shared/data``.

Replicating NFCorpus makes every document a copy of 3,633 originals: each term's documents are
copies, top-10 lists are ties, and dynamic pruning meets a corpus no user has. Recombining keeps
real vocabulary and real term statistics but makes every document different:

- an **abstract** (80%) takes the title and the first sentence of one NFCorpus document and
  three to seven further sentences, each drawn with probability 0.6 from the same document and
  otherwise from a random one (the topic stays, the wording mixes); no patient, source
  ``pubmed``, metadata ``{"publication_type": one of five}``;
- a **note** (20%) does the same over the MTSamples notes' sentences, for one of 10,000 patients;
  a patient's notes come one after another, as an EHR export writes them; source ``notes``,
  metadata ``{"specialty": the source note's}``.

Documents stay within one 256-token passage (title plus at most eight sentences of at most 40
words), so passages equal documents and a corpus of N documents is N passages.

Deterministic for a seed: ``documents(n, seed)`` yields the same dicts in the same order.

    python benchmarks/corpus.py --docs 1000 --out /tmp/corpus   # pubmed.jsonl and notes.jsonl
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PATIENTS = 10_000
NOTE_SHARE = 0.2
PUBLICATION_TYPES = ("journal-article", "review", "clinical-trial", "meta-analysis", "case-report")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def _sentences(text: str) -> list[str]:
    out = []
    for s in _SENTENCE.split(" ".join(text.split())):
        words = s.split()
        if len(words) >= 3:
            out.append(" ".join(words[:40]))
    return out


@lru_cache(maxsize=1)
def _sources(data: Path = DATA) -> tuple[list[tuple[str, list[str], str]], list[tuple[str, list[str], str]]]:
    """(title, sentences, label) of every NFCorpus document and every MTSamples note."""
    abstracts, notes = [], []
    with (data / "nfcorpus" / "corpus.jsonl").open("rb") as f:
        for line in f:
            d = orjson.loads(line)
            s = _sentences(d.get("text", ""))
            if s:
                abstracts.append((d.get("title", ""), s, ""))
    with (data / "mtsamples" / "notes.jsonl").open("rb") as f:
        for line in f:
            d = orjson.loads(line)
            s = _sentences(d.get("text", ""))
            if s:
                notes.append((d.get("title", ""), s, str((d.get("metadata") or {}).get("specialty", ""))))
    return abstracts, notes


def _compose(rng: np.random.Generator, pool: list[tuple[str, list[str], str]]) -> tuple[str, str, str]:
    base = pool[int(rng.integers(len(pool)))]
    title, own, label = base
    body = [own[0]]
    for i in range(int(rng.integers(3, 8))):
        if rng.random() < 0.6 and i + 1 < len(own):
            body.append(own[i + 1])
        else:
            other = pool[int(rng.integers(len(pool)))][1]
            body.append(other[int(rng.integers(len(other)))])
    return title, " ".join(body), label


def documents(n: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """n (source, document) pairs, each document in medpg's JSONL shape (``_id``, ``title``, ...)."""
    abstracts, notes = _sources()
    rng = np.random.default_rng(seed)
    n_notes = int(round(n * NOTE_SHARE))
    # Notes are spread over the patients in contiguous runs, a patient's notes together.
    per_patient = max(n_notes / PATIENTS, 1.0)
    # Every fifth document is a note, so a corpus of any length mixes both.
    for i in range(n):
        if n_notes and i % 5 == 4 and (i // 5) < n_notes:
            k = i // 5
            title, body, specialty = _compose(rng, notes)
            patient = f"p{int(k / per_patient) % PATIENTS:05d}"
            yield "notes", {
                "_id": f"n{i}",
                "title": title,
                "text": body,
                "patient_id": patient,
                "metadata": {"specialty": specialty},
            }
        else:
            title, body, _ = _compose(rng, abstracts)
            yield "pubmed", {
                "_id": f"a{i}",
                "title": title,
                "text": body,
                "metadata": {"publication_type": PUBLICATION_TYPES[int(rng.integers(len(PUBLICATION_TYPES)))]},
            }


def write_jsonl(n: int, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write n documents as ``pubmed.jsonl`` and ``notes.jsonl`` in out_dir (ingest each with its
    stem as the source); returns {source: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {s: out_dir / f"{s}.jsonl" for s in ("pubmed", "notes")}
    files = {s: p.open("wb") for s, p in paths.items()}
    try:
        for source, d in documents(n, seed):
            files[source].write(orjson.dumps(d) + b"\n")
    finally:
        for f in files.values():
            f.close()
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    write_jsonl(args.docs, args.out, args.seed)


if __name__ == "__main__":
    main()
