"""Rebuild nfcorpus-sample/: a slice of BEIR NFCorpus small enough to commit, for the demo.

    python examples/data/make_sample.py ../shared/data/nfcorpus examples/data/nfcorpus-sample

Takes the first 8 test queries that have directly relevant (grade 2) documents, all their judged
documents, and unjudged documents from the corpus order up to 600 documents in all.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import orjson


def main(src: Path, dst: Path, n_queries: int = 8, n_docs: int = 600) -> None:
    qrels: dict[str, dict[str, int]] = {}
    with (src / "qrels" / "test.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = [q for q, judged in qrels.items() if 2 in judged.values()][:n_queries]
    keep = {d for q in queries for d in qrels[q]}
    corpus = [orjson.loads(line) for line in (src / "corpus.jsonl").read_bytes().splitlines()]
    chosen = [d for d in corpus if d["_id"] in keep]
    for d in corpus:
        if len(chosen) >= max(n_docs, len(keep)):
            break
        if d["_id"] not in keep:
            chosen.append(d)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "qrels").mkdir(exist_ok=True)
    (dst / "corpus.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in chosen))
    all_queries = {q["_id"]: q for q in map(orjson.loads, (src / "queries.jsonl").read_bytes().splitlines())}
    (dst / "queries.jsonl").write_bytes(b"".join(orjson.dumps(all_queries[q]) + b"\n" for q in queries))
    ids = {d["_id"] for d in chosen}
    with (dst / "qrels" / "test.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            for d, s in qrels[q].items():
                if d in ids:
                    fh.write(f"{q}\t{d}\t{s}\n")
    print(f"{len(chosen)} documents, {len(queries)} queries -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
