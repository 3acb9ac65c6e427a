"""The embedded default: no MEDPG_DATABASE_URL means medpg's own PostgreSQL in MEDPG_DATA_DIR."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="medpg-embedded-"))
    parent.chmod(0o755)  # the server runs as an unprivileged user when tests run as root
    yield parent / "data"
    # If a test failed with the server still up, stop it before removing its directory.
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(parent) in " ".join(proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(parent, ignore_errors=True)


def _medpg(args: list[str], data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(MEDPG_DATA_DIR=str(data_dir), MEDPG_MODEL_PROFILE="minilm")
    return subprocess.Popen(
        [sys.executable, "-m", "medpg.cli", *args],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(args: list[str], data_dir: Path) -> str:
    proc = _medpg(args, data_dir)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return out


def test_embedded_server_is_created_reused_and_stopped(data_dir: Path, tmp_path: Path) -> None:
    out = _run(["db", "upgrade"], data_dir)
    assert "(embedded)" in out
    assert (data_dir / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    # stopped cleanly when the last process using it exits
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(f'{{"_id": "{i}", "text": "note {i} about asthma"}}\n' for i in range(50)))
    # two processes at once share one server in the same data directory
    procs = [_medpg(["ingest", str(corpus), "--no-progress"], data_dir) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    status = _run(["status"], data_dir)
    assert "documents" in status and "50" in status
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


_HOLD = """
import os, signal, sys, time
from pathlib import Path
from medpg.db.embedded import start_embedded
start_embedded(Path(sys.argv[1]), "medpg")
print("ready", flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(float(sys.argv[3]))
"""


def _hold(data_dir: Path, how: str, seconds: float = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(data_dir), how, str(seconds)], text=True, stdout=subprocess.PIPE
    )


def test_a_killed_process_does_not_keep_the_server_alive(data_dir: Path) -> None:
    """A process SIGKILLed while using the server stays on the library's list of users; medpg drops
    it, so the server still stops when the last live process exits."""
    keeper = _hold(data_dir, "stay", 8)
    assert keeper.stdout is not None and keeper.stdout.readline().strip() == "ready"
    victim = _hold(data_dir, "die")
    victim.wait(timeout=120)
    assert victim.returncode == -9
    handles = data_dir / "pgdata" / ".handle_pids.json"
    assert victim.pid in __import__("json").loads(handles.read_text())  # the dead process is still listed
    keeper.wait(timeout=60)
    assert keeper.returncode == 0
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # stopped: the dead entry did not count


def test_db_start_url_shell_stop(data_dir: Path) -> None:
    """`medpg db start` keeps the embedded server up for SQL clients until `medpg db stop`."""
    import psycopg

    started = _run(["db", "start"], data_dir)
    url = started.strip().splitlines()[-1]
    assert url.startswith("postgresql://postgres@/medpg?host=")
    assert _run(["db", "url"], data_dir).strip() == url
    assert _run(["db", "upgrade"], data_dir)
    # No medpg process is running now: the server is up for other clients anyway.
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM medpg.chunk_states").fetchone() == (0,)
    shell = _medpg(["db", "shell"], data_dir)
    out, err = shell.communicate("SELECT 40 + 2 AS answer;\n", timeout=60)
    assert shell.returncode == 0, err
    assert "42" in out
    assert "stopped" in _run(["db", "stop"], data_dir)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
