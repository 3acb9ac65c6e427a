"""Settings follow the model that made a database's vectors, unless a model was chosen explicitly.

The database is embedded for real with the packaged all-MiniLM-L6-v2, as `make demo` does; settings
that name no profile (the MedCPT default) then resolve to the minilm profile, search works with
them, and a stored model that cannot be loaded here names the settings to make.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medpg import schema
from medpg.config import Settings, load_settings
from medpg.db import Database
from medpg.embedding import Embedder, article_model_identity
from medpg.errors import ModelNotAvailableError, SchemaMismatchError
from medpg.ingest import ingest_file
from medpg.retrieval.pipeline import search
from medpg.stored_model import open_database, resolve_settings_for_database, stored_model

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "nfcorpus-sample" / "corpus.jsonl"


def unchosen(db: Database, **values: object) -> Settings:
    """Settings for ``db`` that choose no model: what a user with only MEDPG_DATA_DIR set has."""
    base: dict[str, object] = {
        "_settings_file": None,
        "database_url": db.settings.database_url,
        "device": "cpu",
        "hf_offline": True,
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def minilm_db(
    migrated_db: Callable[..., Database], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """A database with a few sample documents embedded by the packaged MiniLM (the demo's model)."""
    db = migrated_db("stored_minilm")
    path = tmp_path_factory.mktemp("stored") / "docs.jsonl"
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:3]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest_file(db, db.settings, path, source="sample", progress=False)
    assert Embedder(db, db.settings).embed_pending().written > 0
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def other_db(migrated_db: Callable[..., Database]) -> Iterator[Database]:
    """An empty MiniLM-space database whose stored model each test sets."""
    db = migrated_db("stored_other")
    yield db
    db.dispose()


def set_stored(db: Database, model: str | None) -> None:
    with db.connect() as conn:
        conn.execute("UPDATE medpg.embedding_space SET model = %s", (model,))
        conn.commit()


def test_the_packaged_minilm_gives_the_minilm_profile(minilm_db: Database) -> None:
    stored = stored_model(minilm_db)
    assert stored == article_model_identity(minilm_db.settings)
    assert stored is not None and stored.startswith("all-MiniLM-L6-v2@")

    settings = unchosen(minilm_db)
    assert settings.model_profile == "medcpt"
    with pytest.raises(SchemaMismatchError):  # the default alone does not fit this database
        schema.check(Database(settings))

    resolved = resolve_settings_for_database(settings, stored)
    assert (resolved.model_profile, resolved.chunk_tokens, resolved.chunk_overlap) == ("minilm", 128, 32)
    assert resolved.database_url == settings.database_url

    db = open_database(settings, strict=True)
    try:
        assert db.settings == resolved
        schema.check(db)
        response = search("statin drugs and breast cancer", k=3, mode="hybrid", db=db, settings=db.settings)
        assert response.results and response.mode == "hybrid"
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (
            "my-encoder@0123456789ab",
            "MEDPG_ARTICLE_MODEL=/path/to/my-encoder with MEDPG_MODEL_PROFILE=sentence",
        ),
        ("acme/not-cached-encoder@0123456789ab", "MEDPG_ARTICLE_MODEL=acme/not-cached-encoder"),
        ("all-MiniLM-L6-v2@000000000000", "MEDPG_MODEL_PROFILE=minilm to embed again"),
    ],
)
def test_a_model_not_loadable_here_names_the_settings_to_make(
    other_db: Database, caplog: pytest.LogCaptureFixture, model: str, names: str
) -> None:
    set_stored(other_db, model)
    settings = unchosen(other_db)
    with pytest.raises(
        ModelNotAvailableError, match=f"this database's vectors were made by {model}"
    ) as caught:
        open_database(settings, strict=True)
    assert names in str(caught.value)

    with caplog.at_level(logging.WARNING, logger="medpg.stored_model"):
        db = open_database(settings)  # commands that need no model still run, with the warning
    assert db.settings == settings
    assert any(names in record.getMessage() for record in caplog.records)
    db.dispose()


def test_an_explicit_model_choice_always_wins(
    other_db: Database, minilm_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_stored(other_db, "my-encoder@0123456789ab")
    toml = tmp_path / "medpg.toml"
    toml.write_text('model_profile = "medcpt"\n', encoding="utf-8")
    explicit = [
        unchosen(other_db, model_profile="medcpt"),
        unchosen(other_db, _settings_file=toml),
        unchosen(other_db, article_model="ncbi/MedCPT-Article-Encoder"),
    ]
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "medcpt")
    explicit.append(
        load_settings(_env_file=None, _settings_file=None, database_url=other_db.settings.database_url)
    )
    for settings in explicit:
        db = open_database(settings, strict=True)
        assert db.settings is settings and db.settings.model_profile == "medcpt"
        db.dispose()
        assert resolve_settings_for_database(settings, stored_model(minilm_db)) is settings


def test_a_database_without_vectors_keeps_the_settings(other_db: Database) -> None:
    set_stored(other_db, None)
    settings = unchosen(other_db)
    assert stored_model(other_db) is None
    assert open_database(settings, strict=True).settings is settings
    # MedCPT vectors with the MedCPT default: nothing to change (a missing copy is reported on load)
    assert resolve_settings_for_database(settings, "ncbi/MedCPT-Article-Encoder@0123456789ab") is settings


def test_a_fresh_data_directory_is_not_started_to_look(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, _settings_file=None, data_dir=tmp_path / "fresh")
    db = open_database(settings, strict=True)
    assert db.settings is settings
    assert not (tmp_path / "fresh").exists()  # no server was initialised just to find no vectors


def test_a_worker_process_follows_the_stored_model(minilm_db: Database) -> None:
    """`celery -A workers.celery_app worker` with only the database set embeds with the stored
    model's profile, as the CLI does, instead of the MedCPT default."""
    from workers import tasks

    # An app module imported by another test (tests.fixtures.slow_worker) may have installed its
    # encoder factory in this process; the default one loads the encoder lazily, so none loads here.
    tasks.set_encoder_factory(None)
    tasks.use_settings(unchosen(minilm_db))
    try:
        settings = tasks.embedder().settings
        assert settings.model_profile == "minilm"
        assert article_model_identity(settings) == article_model_identity(minilm_db.settings)
    finally:
        tasks.use_settings(minilm_db.settings)  # also drops the handle opened here
