"""The README cannot lie: every shell, Python and SQL block in it runs, in order, as a newcomer would.

One fresh data directory for the whole walk (so later blocks see what earlier ones did), the shipped
sample data, the `minilm` profile that `make demo` leaves in medpg.toml, and the repository's paths
(a scratch directory with `examples/` and `../shared` linked in, so outputs land there). A block is
skipped only when the line before it says ``<!-- not run: why -->``. Each block must exit 0; a
``medpg search`` must print results; a SQL statement must return rows; an ``<!-- expect: regex -->``
line right after a block must match its output.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = REPO / "README.md"
RUN_LANGUAGES = {"sh", "bash", "python", "sql"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
EXPECT = re.compile(r"<!--\s*expect:\s*(.+?)\s*-->")


@dataclass
class Block:
    language: str
    code: str
    line: int
    not_run: str | None = None
    expect: list[str] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their language, first line, skip reason and expectations."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = NOT_RUN.search(before)
        block = Block(fence.group(1), "\n".join(body) + "\n", start + 1, skip.group(1) if skip else None)
        j = i + 1
        while j < len(lines) and (match := EXPECT.search(lines[j])):
            block.expect.append(match.group(1))
            j += 1
        blocks.append(block)
        i += 1
    return blocks


def test_every_command_block_is_run_or_says_why_not() -> None:
    blocks = readme_blocks(README.read_text())
    assert blocks
    for b in blocks:
        # Blocks without a language are diagrams and output; commands are labelled.
        if not b.language:
            assert not re.search(r"^\s*(medpg|make|pip|psql|export) ", b.code, re.M), f"README.md:{b.line}"
        else:
            assert b.language in RUN_LANGUAGES | {"toml", "text"}, f"README.md:{b.line}: {b.language}"
    assert sum(b.language in RUN_LANGUAGES and b.not_run is None for b in blocks) >= 8


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("readme")
    root.chmod(0o755)  # the embedded server runs as an unprivileged user when tests run as root
    work = root / "repo"
    work.mkdir()
    for name in ("examples", ".venv", "pyproject.toml", "Makefile"):
        (work / name).symlink_to(REPO / name)
    (root / "shared").symlink_to(REPO.parent / "shared")
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDPG_", "MEDPGTEST_"))}
    env.update(
        MEDPG_DATA_DIR=str(data),
        MEDPG_MODEL_PROFILE="minilm",  # what `make demo` writes to medpg.toml
        MEDPGTEST_SETTINGS_FILE="",  # no developer's ~/.config/medpg/medpg.toml
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return work, env


def _run(
    args: list[str], work: Path, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=work, env=env, input=stdin, capture_output=True, text=True, timeout=900)


def _medpg_url(work: Path, env: dict[str, str]) -> str:
    started = _run(["medpg", "db", "start"], work, env)
    assert started.returncode == 0, started.stderr
    return started.stdout.strip().splitlines()[-1]


def _check(block: Block, out: subprocess.CompletedProcess[str]) -> None:
    where = f"README.md:{block.line}"
    assert out.returncode == 0, (
        f"{where} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    if block.language in {"sh", "bash"} and "medpg search" in block.code:
        assert "no results" not in out.stdout, f"{where}: a search found nothing:\n{out.stdout[-2000:]}"
    if block.language == "sql":
        assert "(0 rows)" not in out.stdout, f"{where}: a statement returned no rows:\n{out.stdout[-3000:]}"
    for pattern in block.expect:
        assert re.search(pattern, out.stdout + out.stderr), f"{where}: no match for {pattern!r}"


def test_readme_runs_from_top_to_bottom(walk: tuple[Path, dict[str, str]]) -> None:
    work, env = walk
    ran = 0
    try:
        for block in readme_blocks(README.read_text()):
            if block.language not in RUN_LANGUAGES or block.not_run is not None:
                continue
            if block.language in {"sh", "bash"}:
                out = _run(["bash", "-euo", "pipefail", "-c", block.code], work, env, stdin="")
            elif block.language == "python":
                out = _run([sys.executable, "-c", block.code], work, env)
            else:
                url = _medpg_url(work, env)
                out = _run(
                    ["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off"], work, env, block.code
                )
            _check(block, out)
            ran += 1
    finally:
        _stop_service(work)
        _run(["medpg", "db", "stop"], work, env)
    assert ran >= 8


def _stop_service(work: Path) -> None:
    """A `medpg serve` the README started in the background, if a failing block left it running."""
    pid_file = work / "serve.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
