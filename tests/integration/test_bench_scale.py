"""benchmarks/scale.py at smoke size, and the synthetic vectors it loads (benchmarks/vectors.py).

The scale run is 1,000 passages of the recombined corpus, five NFCorpus test queries and one
round, on its own embedded PostgreSQL in a temporary directory: its table, JSON and plot must
cover every path and filter, the figures must be possible ones, and a second run with ``--reuse``
must use the kept database instead of building it again. Timings are never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDPGTEST_DATA_DIR", REPO.parent / "shared" / "data"))
PATHS = ["dense", "ts_rank", "bm25", "bm25 exact", "hybrid"]
FILTERS = ["none", "source", "metadata", "patient"]
N = 1000


@pytest.fixture(scope="module")
def vectors() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import vectors as module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_vectors_are_unit_deterministic_and_independent_of_batch(vectors: Any) -> None:
    texts = [f"Statin therapy and cholesterol in trial {i}" for i in range(20)] + ["", "one"]
    titles = ["Statins"] * 10 + ["Vitamin D"] * 10 + ["", ""]
    a = vectors.doc_vectors(texts, 384, seed=1, titles=titles)
    b = vectors.doc_vectors(texts[5:], 384, seed=1, titles=titles[5:])
    assert a.shape == (22, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a[5:], b)  # a text's vector does not depend on its batch
    assert not np.allclose(a, vectors.doc_vectors(texts, 384, seed=2, titles=titles))
    # the same title shares a topic: closer than texts of another title
    same, other = float(a[0] @ a[1]), float(a[0] @ a[15])
    assert same > other


def test_queries_fall_near_their_anchors(vectors: Any) -> None:
    docs = vectors.doc_vectors([f"document {i} about topic {i % 7}" for i in range(500)], 384, seed=0)
    q = vectors.query_vectors(20, 384, seed=0, anchors=docs[:20])
    assert q.shape == (20, 384)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    top = vectors.exact_top_k(docs, q, 10)
    assert np.mean([i in row for i, row in enumerate(top)]) >= 0.9
    with pytest.raises(ValueError, match="anchors must be"):
        vectors.query_vectors(3, 384, anchors=docs[:2])


def _run(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MEDPGTEST_SETTINGS_FILE="")
    cmd = [sys.executable, str(REPO / "benchmarks" / "scale.py"), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs() -> Iterator[tuple[dict[str, Any], dict[str, Any], Path]]:
    if not (DATA / "nfcorpus" / "corpus.jsonl").exists() or not (DATA / "mtsamples" / "notes.jsonl").exists():
        pytest.skip(f"NFCorpus and the MTSamples notes are not under {DATA}")
    work = Path(tempfile.mkdtemp(prefix="medpg-test-scale-"))
    work.chmod(0o755)  # as root the server runs as an unprivileged user that must reach it
    try:
        common = ["--sizes", str(N), "--dim", "384", "--rounds", "1"]
        _run([*common, "--queries", "5", "--keep", str(work / "kept"), "--out", str(work / "a" / "scale.md")])
        _run([*common, "--queries", "3", "--reuse", str(work / "kept"), "--out", str(work / "b" / "scale.md")])
        first = json.loads((work / "a" / "scale.json").read_text())
        second = json.loads((work / "b" / "scale.json").read_text())
        first["markdown"] = (work / "a" / "scale.md").read_text()
        first["png"] = (work / "a" / "scale.png").read_bytes()[:8]
        yield first, second, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_every_path_and_filter_is_measured(runs: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, _, _ = runs
    run = first["sizes"][str(N)]
    assert run["queries"] == 5 and run["rounds"] == 1
    assert sorted(run["latency_ms"]) == sorted(PATHS)
    for path in PATHS:
        assert sorted(run["latency_ms"][path]) == sorted(FILTERS)
        for stats in run["latency_ms"][path].values():
            assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"]
    assert sorted(run["recall_at_10"]) == sorted(FILTERS)
    assert all(0.0 <= r <= 1.0 for r in run["recall_at_10"].values())


def test_build_figures_and_sizes(runs: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, _, _ = runs
    run = first["sizes"][str(N)]
    build = run["build"]
    assert build["documents"] == N and build["chunks"] >= N and build["vectors"] == build["chunks"]
    assert build["vector_model"] == "synthetic-384d@seed0"
    for key in ("ingest_s", "vector_load_s", "hnsw_build_s"):
        assert build[key] > 0
    for rel in ("documents", "documents_tsv_idx", "chunks", "chunks_embedding_hnsw_idx", "lexical_blocks"):
        assert run["sizes_mib"][rel] > 0, rel
    assert run["sizes_mib"]["database"] > run["sizes_mib"]["chunks_embedding_hnsw_idx"]


def test_report_has_the_command_every_row_and_a_plot(runs: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, _, _ = runs
    md = first["markdown"]
    assert "python benchmarks/scale.py --sizes 1000" in md and "load average" in md
    for path in PATHS:
        for label in ("unfiltered", "source = notes", "publication_type = review", "one patient of 10,000"):
            assert f"| {path} | {label} |" in md, (path, label)
    assert "| dense recall@10 | unfiltered |" in md
    assert first["png"] == b"\x89PNG\r\n\x1a\n"


def test_reuse_keeps_the_built_database(runs: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, second, work = runs
    assert second["sizes"][str(N)]["build"] == first["sizes"][str(N)]["build"]  # not built again
    assert second["sizes"][str(N)]["queries"] == 3
    assert (work / "kept" / f"n{N}-d384" / "build.json").is_file()


def test_real_minilm_vectors_run_through_medpg_embed(tmp_path: Path) -> None:
    """``--encoder minilm``: the chunks embedded by the packaged MiniLM with medpg's embedder, the
    queries by its query encoder; the report says so and names its plot after ``--out``."""
    if not (DATA / "nfcorpus" / "corpus.jsonl").exists() or not (DATA / "mtsamples" / "notes.jsonl").exists():
        pytest.skip(f"NFCorpus and the MTSamples notes are not under {DATA}")
    tmp_path.chmod(0o755)
    out = tmp_path / "out" / "scale_minilm.md"
    _run(["--sizes", "200", "--encoder", "minilm", "--queries", "3", "--rounds", "1", "--out", str(out)])
    run = json.loads(out.with_suffix(".json").read_text())["sizes"]["200"]
    assert run["encoder"] == "minilm" and run["dim"] == 384
    build = run["build"]
    assert "minilm" in build["vector_model"].lower()
    assert build["vectors"] == build["chunks"] >= 200 and build["embed_chunks_per_s"] > 0
    assert sorted(run["latency_ms"]) == sorted(PATHS)
    assert all(0.0 <= r <= 1.0 for r in run["recall_at_10"].values())
    md = out.read_text()
    assert "all-MiniLM-L6-v2 (384 dimensions, real embeddings" in md
    assert "](scale_minilm.png)" in md and out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
