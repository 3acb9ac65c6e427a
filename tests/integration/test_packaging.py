"""A non-editable install carries the schema: medpg.migrations comes from migrations/ at the top."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from medpg.db.revisions import head_revision
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _package_dirs() -> set[str]:
    found = set()
    for top in ("medpg", "workers"):
        for init in (REPO / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO).parts))
    return found


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert _package_dirs() | {"medpg.migrations"} == listed
    assert config["package-dir"] == {"medpg.migrations": "migrations"}
    assert not (REPO / "medpg" / "migrations").exists()  # one copy of the schema, at the top


@pytest.mark.slow
def test_installed_wheel_migrates_a_fresh_database(
    tmp_path: Path, create_database: Callable[[str], str]
) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("medpg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "medpg/migrations/env.py",
        "medpg/migrations/frozen.txt",
        "medpg/migrations/sql/teardown.sql",
        "medpg/migrations/sql/idempotent/060_hybrid_search.sql",
        "medpg/migrations/versions/0007_chunking_queue.py",
    }
    assert expected <= names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(
        PYTHONPATH=str(target),
        MEDPG_DATABASE_URL=create_database("wheel"),
        MEDPG_MODEL_PROFILE="minilm",
    )
    where = subprocess.run(
        [sys.executable, "-c", "import medpg.migrations as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    out = subprocess.run(
        [sys.executable, "-m", "medpg.cli", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert f"is at revision {head_revision()}" in out.stdout


def test_the_image_copies_every_installed_directory() -> None:
    """docker-compose builds the image with `pip install .`: each directory the package installs is copied."""
    dockerfile = (REPO / "Dockerfile").read_text()
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {p.split(".")[0] for p in config["packages"]} | set(config["package-dir"].values())
    tops.discard("medpg.migrations")
    for top in sorted(tops):
        assert f"COPY {top} ./{top}" in dockerfile, top
