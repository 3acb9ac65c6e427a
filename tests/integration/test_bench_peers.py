"""benchmarks/peers.py at smoke size: every installed peer and medpg produce nDCG@10 and latency rows.

A 1,000-passage run of the recombined corpus and 100 NFCorpus documents, five queries, synthetic
vectors (no model is loaded), in a fresh cache. The peers come from the ``bench`` extra; a peer
whose package is missing must be reported as skipped, and where ``CI`` is set none may be missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NFCORPUS = Path(os.environ.get("MEDPGTEST_DATA_DIR", REPO.parent / "shared" / "data")) / "nfcorpus"
# the module each system needs beyond medpg's own dependencies
MODULES = {"lancedb": "lancedb", "milvus": "milvus_lite", "pg_textsearch": "pgserver", "bm25s": "bm25s"}
SYSTEMS = ["medpg", "medpg-search", "lancedb", "milvus", "pgvector-rrf", "pg_textsearch", "bm25s", "torch"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@pytest.fixture(scope="module")
def report() -> dict:
    if not (NFCORPUS / "corpus.jsonl").exists():
        pytest.skip(f"NFCorpus is not at {NFCORPUS}")
    work = Path(tempfile.mkdtemp(prefix="medpg-test-peers-"))
    work.chmod(0o755)  # as root the server runs as an unprivileged user that must reach the cache
    out = work / "peers.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MEDPGTEST_SETTINGS_FILE="")
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "peers.py"), "--cache", str(work / "cache"),
        "--nfcorpus", str(NFCORPUS), "--nfcorpus-docs", "100", "--synthetic-nfcorpus",
        "--passages", "1000", "--queries", "5", "--rounds", "1", "--out", str(out),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(out.with_suffix(".json").read_text())
        result["markdown"] = out.read_text()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _expected() -> list[str]:
    missing = [k for k, m in MODULES.items() if importlib.util.find_spec(m) is None]
    if missing and _in_ci():
        pytest.fail(f"peers not installed in CI: {missing} (make test installs .[dev,bench])")
    return [k for k in SYSTEMS if k not in missing]


def test_every_available_system_has_an_ndcg_row(report: dict) -> None:
    quality = report["quality"]
    expected = _expected()
    assert sorted(quality["systems"]) == sorted(expected), (quality["skipped"], quality["failed"])
    for key, row in quality["systems"].items():
        assert 0.0 <= row["ndcg@10"] <= 1.0, key
        assert row["n"] == 5 and row["p50"] > 0, key
    # medpg's SQL call and its Python pipeline rank the same documents
    assert quality["systems"]["medpg"]["ndcg@10"] == pytest.approx(
        quality["systems"]["medpg-search"]["ndcg@10"]
    )
    # lexical ranking works on the real text even with synthetic vectors
    assert quality["systems"]["medpg"]["ndcg@10"] > 0.1
    if "bm25s" in quality["systems"]:
        assert quality["systems"]["bm25s"]["ndcg@10"] > 0.1


def test_every_available_system_has_a_latency_row_with_ratios(report: dict) -> None:
    assert list(report["latency"]) == ["1000"]
    part = report["latency"]["1000"]
    expected = _expected()
    assert sorted(part["systems"]) == sorted(expected), (part["skipped"], part["failed"])
    for key, row in part["systems"].items():
        assert row["n"] == 5 and 0 < row["p50"] <= row["p95"], key
        assert row["p50_ratio"] == pytest.approx(row["p50"] / part["systems"]["medpg"]["p50"]), key
    assert part["systems"]["medpg"]["p50_ratio"] == pytest.approx(1.0)


def test_report_names_the_command_versions_and_machine(report: dict) -> None:
    md = report["markdown"]
    assert "python benchmarks/peers.py" in md.splitlines()[3]
    assert "load average" in report["uptime_start"]
    for package in ("lancedb", "pymilvus", "bm25s", "torch", "pgvector"):
        assert package in report["versions"]
    assert sorted(report["details"]) == ["1,000 passages", "NFCorpus"]
    for details in report["details"].values():
        assert sorted(details) == sorted(_expected())
    assert "## Latency at 1,000 passages" in md
