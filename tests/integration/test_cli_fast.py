"""The CLI answers quickly and plainly: lexical commands import no model library, hybrid search
says when it loads the query encoder, a first run says it creates the server, empty results are one
line, long jobs log progress lines when stderr is not a terminal, and --help shows no type markers.
Commands run as subprocesses (a fresh interpreter, as a user runs them) where imports or output
streams matter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from medpg.config import Settings, get_settings
from medpg.db import Database
from medpg.ingest import ingest_file

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL_MODULES = ("torch", "transformers", "sentence_transformers")
NOTES = [
    {"_id": f"n{i}", "title": f"Note {i}", "text": f"Chest pain and statin therapy, visit {i}. " * 4}
    for i in range(24)
]


def write_notes(directory: Path) -> Path:
    path = directory / "notes.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(n) for n in NOTES) + b"\n")
    return path


@pytest.fixture(scope="module")
def notes_db(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The module's database with 24 notes (source ``notes``), none embedded."""
    from tests.conftest import truncate

    truncate(db)
    ingest_file(db, db.settings, write_notes(tmp_path_factory.mktemp("notes")), progress=False)
    yield db


def cli_env(db: Database, data_dir: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with only this test's MEDPG_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(
        MEDPG_DATABASE_URL=str(db.settings.database_url),
        MEDPG_DATA_DIR=str(data_dir),
        MEDPG_MODEL_PROFILE="minilm",
        MEDPG_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def medpg(args: list[str], env: dict[str, str], cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-m", "medpg.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level module names from ``-X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


# --------------------------------------------------------------------------------------------------
# imports


@pytest.mark.parametrize(
    "args",
    [
        ["search", "chest pain", "--mode", "lexical", "-k", "3"],
        ["search", "chest pain", "--mode", "lexical", "--json"],
        ["status"],
        ["db", "status"],
        ["db", "url"],
        ["ingest", "NOTES"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_lexical_commands_import_no_model_library(
    notes_db: Database, tmp_path: Path, args: list[str]
) -> None:
    args = [str(write_notes(tmp_path)) if a == "NOTES" else a for a in args]
    out = medpg(args, cli_env(notes_db, tmp_path), tmp_path, "-X", "importtime")
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = imported_modules(out.stderr) & set(MODEL_MODULES)
    assert not loaded, f"`medpg {' '.join(args)}` imported {sorted(loaded)}"
    assert "import time:" in out.stderr  # the check saw the imports


def test_lexical_search_skips_a_missing_cross_encoder_without_torch(
    notes_db: Database, tmp_path: Path
) -> None:
    env = cli_env(notes_db, tmp_path, MEDPG_CROSS_ENCODER_MODEL=str(tmp_path / "no-reranker"))
    out = medpg(["search", "chest pain", "--mode", "lexical", "--json"], env, tmp_path, "-X", "importtime")
    assert out.returncode == 0, out.stderr[-2000:]
    response = orjson.loads(out.stdout)
    assert response["results"] and not response["reranked"]
    assert any("cross-encoder" in w and "not reranked" in w for w in response["warnings"])
    assert not imported_modules(out.stderr) & set(MODEL_MODULES)
    failing = medpg(["search", "chest pain", "--mode", "lexical", "--rerank"], env, tmp_path)
    assert failing.returncode == 5 and "cross-encoder" in failing.stderr and "Traceback" not in failing.stderr


# --------------------------------------------------------------------------------------------------
# what the CLI prints


@pytest.fixture
def cli(notes_db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    """CliRunner against the notes database (settings from the environment, as the CLI reads them)."""
    monkeypatch.setenv("MEDPG_DATABASE_URL", str(notes_db.settings.database_url))
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    monkeypatch.setenv("MEDPG_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_empty_results_are_one_line(cli: CliRunner) -> None:
    from medpg.cli import app

    out = cli.invoke(app, ["search", "xylophone", "--mode", "lexical"])
    assert out.exit_code == 0, out.output
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("no results — mode lexical")
    assert "┏" not in out.output and "│" not in out.output


def test_a_mistyped_source_says_which_sources_exist(cli: CliRunner) -> None:
    from medpg.cli import app

    out = cli.invoke(app, ["search", "chest pain", "--mode", "lexical", "--source", "mtsamples"])
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("no results") and out.stdout.count("\n") == 1
    assert "warning: the sources filter matches no document; stored sources: notes" in out.stderr


def test_an_empty_query_prints_a_warning_and_no_results(cli: CliRunner) -> None:
    from medpg.cli import app

    out = cli.invoke(app, ["search", "  "])
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("no results") and "the query is empty" in out.stderr
    assert "loading" not in out.stderr


def test_hybrid_search_says_it_loads_the_query_encoder_on_stderr(cli: CliRunner, notes_db: Database) -> None:
    from medpg.cli import app
    from medpg.embedding import article_model_identity

    with notes_db.connect() as conn:  # half the chunks get a (made-up) vector of the configured model
        conn.execute(
            "UPDATE medpg.chunks SET embedding = array_fill(0.05, ARRAY[384])::vector, embedding_model = %s,"
            " embedded_hash = content_hash WHERE id %% 2 = 0",
            (article_model_identity(notes_db.settings),),
        )
        conn.execute(
            "UPDATE medpg.embedding_space SET model = %s", (article_model_identity(notes_db.settings),)
        )
        conn.commit()
    try:
        out = cli.invoke(app, ["search", "chest pain", "--json"])
        assert out.exit_code == 0, out.output
        assert "loading the query encoder..." in out.stderr
        response = orjson.loads(out.stdout)  # stdout is the JSON alone
        assert any(w.startswith("dense retrieval covered") for w in response["warnings"])
        lexical = cli.invoke(app, ["search", "chest pain", "--mode", "lexical", "--json"])
        assert "loading" not in lexical.stderr
    finally:
        with notes_db.connect() as conn:
            conn.execute(
                "UPDATE medpg.chunks SET embedding = NULL, embedding_model = NULL, embedded_hash = NULL"
            )
            conn.execute("UPDATE medpg.embedding_space SET model = NULL")
            conn.commit()


def test_first_run_says_it_initialises_the_embedded_server(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medpg.cli.common import announce_first_run

    fresh = make_settings(data_dir=tmp_path / "new")
    announce_first_run(fresh)
    assert capsys.readouterr().err.strip() == (
        f"initialising the embedded PostgreSQL in {tmp_path / 'new' / 'pgdata'} (first run)..."
    )
    (tmp_path / "new" / "pgdata").mkdir(parents=True)
    announce_first_run(fresh)
    announce_first_run(make_settings(data_dir=tmp_path / "other", database_url="postgresql://u@h/d"))
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# progress lines when stderr is not a terminal


def test_ingest_and_embed_log_progress_lines_when_not_a_terminal(
    migrated_db: Callable[..., Database], tmp_path: Path
) -> None:
    fresh = migrated_db("cli_progress")
    try:
        env = cli_env(fresh, tmp_path, MEDPG_EMBED_CLAIM_SIZE="8", MEDPG_INGEST_BATCH_SIZE="8")
        ingest = medpg(["ingest", str(write_notes(tmp_path)), "--progress-every", "0"], env, tmp_path)
        assert ingest.returncode == 0, ingest.stderr
        lines = ingest.stderr.splitlines()
        assert "ingest notes.jsonl: 0/24 documents (0%), ? documents/s, 00:00 elapsed" in lines
        assert any(
            re.fullmatch(r"ingest notes\.jsonl: 8/24 documents \(33%\), [\d.]+ documents/s, .*", ln)
            for ln in lines
        )
        assert any(ln.startswith("ingest notes.jsonl: 24/24 documents (100%)") for ln in lines)
        assert "\r" not in ingest.stderr

        embed = medpg(["embed", "--progress-every", "0"], env, tmp_path)
        assert embed.returncode == 0, embed.stderr
        progress = [ln for ln in embed.stderr.splitlines() if ln.startswith("embedding: ")]
        total = int(re.search(r"/(\d+) chunks", progress[0]).group(1))  # type: ignore[union-attr]
        assert total >= 24 and len(progress) >= 1 + total // 8
        assert re.fullmatch(
            rf"embedding: {total}/{total} chunks \(100%\), [\d.]+ chunks/s, \d\d:\d\d elapsed", progress[-1]
        )
        assert "\r" not in embed.stderr and embed.stdout.startswith(f"embedded {total} chunks")

        quiet = medpg(["ingest", str(tmp_path / "notes.jsonl"), "--no-progress"], env, tmp_path)
        assert quiet.returncode == 0 and "documents/s, " not in quiet.stderr
    finally:
        fresh.dispose()


def test_progress_lines_come_at_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from medpg.progress import progress_bar

    stream = io.StringIO()
    with progress_bar(1000, desc="embedding", unit="chunks", interval=3600, stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "embedding: 0/1000 chunks (0%)",
        "embedding: 1000/1000 chunks (100%)",
    ]
    silent = io.StringIO()
    with progress_bar(10, desc="x", unit="rows", enabled=False, stream=silent) as bar:
        bar.update(10)
    assert silent.getvalue() == "" and capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# --help

TYPE_MARKERS = re.compile(r"<(bool|str|int|float|path|list\[[a-z]+\]|int range|float range)>|\{[a-z_]+\}")
HELP_COMMANDS = [
    [],
    ["search"],
    ["ingest"],
    ["embed"],
    ["eval"],
    ["status"],
    ["worker"],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "url"],
    ["models"],
    ["models", "check"],
    ["models", "download"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "medpg")
def test_help_shows_no_type_markers(command: list[str]) -> None:
    from medpg.cli import app

    out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output
    assert not TYPE_MARKERS.findall(out.output), out.output


def test_help_names_arguments_and_option_values() -> None:
    from medpg.cli import app

    out = CliRunner().invoke(app, ["search", "--help"], env={"COLUMNS": "120"})
    assert "search [OPTIONS] QUERY" in out.output
    for shown in ("--mode", "MODE", "--source", "NAME", "--metadata", "JSON", "-k", " N "):
        assert shown in out.output
