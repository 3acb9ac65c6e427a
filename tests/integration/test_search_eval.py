"""`medpg eval` on a tiny BEIR data set: ingest, embed (packaged MiniLM), run every system, write the table."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from medpg.config import get_settings
from medpg.db import Database
from medpg.errors import InputError
from medpg.evaluation import evaluate_dataset, load_beir, render_markdown

pytestmark = pytest.mark.integration

DOCS = {
    "a1": (
        "Statins and LDL",
        "Statin therapy lowers LDL cholesterol in adults with high cardiovascular risk.",
    ),
    "a2": ("Vitamin D", "Vitamin D supplementation and bone fractures in elderly women."),
    "a3": ("Coffee", "Coffee consumption and liver cancer: a prospective cohort."),
    "a4": ("Sleep", "Short sleep duration is associated with obesity in children."),
    "a5": ("Fish oil", "Omega-3 fatty acids from fish oil and depressive symptoms."),
    "a6": ("Soy", "Soy isoflavones and breast cancer recurrence."),
}
QUERIES = {
    "q1": "do statins lower cholesterol",
    "q2": "coffee and liver cancer",
    "q3": "fish oil for depression",
}
QRELS = {"q1": {"a1": 2}, "q2": {"a3": 2, "a6": 1}, "q3": {"a5": 1}}


def write_beir(root: Path) -> Path:
    ds = root / "tinybeir"
    (ds / "qrels").mkdir(parents=True)
    (ds / "corpus.jsonl").write_bytes(
        b"\n".join(orjson.dumps({"_id": k, "title": t, "text": x}) for k, (t, x) in DOCS.items())
    )
    (ds / "queries.jsonl").write_bytes(
        b"\n".join(orjson.dumps({"_id": k, "text": v}) for k, v in QUERIES.items())
    )
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{q}\t{d}\t{s}" for q, ds_ in QRELS.items() for d, s in ds_.items()
    ]
    (ds / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return ds


def test_load_beir_reads_judged_queries(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path), "test")
    assert data.queries == QUERIES and data.qrels == QRELS and data.name == "tinybeir"
    with pytest.raises(InputError, match="qrels/dev.tsv"):
        load_beir(tmp_path / "tinybeir", "dev")


def test_evaluate_dataset_end_to_end(db: Database, tmp_path: Path) -> None:
    report = evaluate_dataset(db, db.settings, write_beir(tmp_path), split="test")
    names = [s.name for s in report.systems]
    assert "lexical bm25" in names and "dense" in names and any("(default)" in n for n in names)
    assert (
        report.documents == len(DOCS)
        and report.queries == len(QUERIES)
        and report.chunks_embedded == len(DOCS)
    )
    by_name = {s.name: s for s in report.systems}
    assert by_name["lexical bm25"].ndcg10 == pytest.approx(1.0)  # each query's words are in its answer
    for s in report.systems:
        assert 0.0 <= s.ndcg10 <= 1.0 and 0.0 <= s.recall100 <= 1.0 and s.p50_ms > 0
    md = render_markdown(report)
    assert "| lexical bm25 | 1.0000 |" in md and "Command:" in md
    # every system against the default: the default itself has no comparison, every other one has
    default = next(s for s in report.systems if "(default)" in s.name)
    assert report.significance is not None and report.significance["baseline"] == default.name
    assert default.vs_default is None
    for s in report.systems:
        if s is not default:
            assert s.vs_default is not None and set(s.vs_default) == {"ndcg@10", "recall@100"}
            c = s.vs_default["ndcg@10"]
            assert c.wins + c.ties + c.losses == len(QUERIES)
            assert c.delta == pytest.approx(s.ndcg10 - default.ndcg10)
    assert "| Δ nDCG@10 | p nDCG@10 | W/T/L nDCG@10 |" in md
    again = evaluate_dataset(db, db.settings, tmp_path / "tinybeir", split="test", systems=["lexical bm25"])
    assert [s.name for s in again.systems] == ["lexical bm25"]  # ingest and embed were no-ops
    assert again.significance is None and again.systems[0].vs_default is None  # no default, no comparison
    with pytest.raises(InputError, match="unknown system"):
        evaluate_dataset(db, db.settings, tmp_path / "tinybeir", systems=["bm99"])


def test_medpg_eval_writes_the_table_the_json_and_the_plot(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medpg.cli import app

    dataset = write_beir(tmp_path)
    monkeypatch.setenv("MEDPG_DATABASE_URL", str(db.settings.database_url))
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    monkeypatch.setenv("MEDPG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDPG_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["eval", str(dataset), "--no-progress"], env={"COLUMNS": "200"})
        bare = CliRunner().invoke(
            app, ["eval", str(dataset), "--no-progress", "--no-plot", "-o", "bare/t.md", "--systems", "dense"]
        )
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    md, js, png = (tmp_path / f"tinybeir_test_eval.{ext}" for ext in ("md", "json", "png"))
    assert f"wrote {md.name}, {js.name} and {png.name}" in out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(tinybeir_test_eval.png)" in md.read_text()
    data = json.loads(js.read_text())
    assert data["significance"]["test"].startswith("two-sided paired Student's t-test")
    assert all("vs_default" in s for s in data["systems"])
    assert bare.exit_code == 0, bare.output
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["t.json", "t.md"]  # --no-plot
