"""Rebuild clinic-notes/notes.csv: a CSV of clinical notes, as a site would export them, for the README.

    python examples/data/make_clinic_notes.py ../shared/data/mtsamples/notes.jsonl examples/data/clinic-notes/notes.csv

Takes the (up to) 4 shortest notes of each specialty in MTSamples (de-identified sample transcriptions) and
gives them the columns of an EHR export: a note id, a subject, the text, the specialty, a patient
(MRN) and a date. The MRNs (p-0001 … p-0008) and dates (from 2019-01-15, 97 days apart) are made up,
assigned in turn, so each patient has notes of several specialties and years.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import orjson

PER_SPECIALTY = 4
PATIENTS = 8


def main(src: Path, dst: Path) -> None:
    notes = [orjson.loads(line) for line in src.read_bytes().splitlines() if line.strip()]
    by_specialty: dict[str, list[dict]] = defaultdict(list)
    for note in notes:
        by_specialty[note["metadata"]["specialty"].strip()].append(note)
    chosen = []
    for specialty in sorted(by_specialty):
        shortest = sorted(by_specialty[specialty], key=lambda n: (len(n["text"]), n["_id"]))[:PER_SPECIALTY]
        chosen += [(specialty, n) for n in shortest]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["note_id", "subject", "note_text", "specialty", "mrn", "written"])
        for i, (specialty, n) in enumerate(chosen):
            written = date(2019, 1, 15) + timedelta(days=97 * i)
            out.writerow(
                [n["_id"], n["title"], n["text"], specialty, f"p-{i % PATIENTS + 1:04d}", written.isoformat()]
            )
    print(f"wrote {len(chosen)} notes to {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
