"""Keep the embedded PostgreSQL running for other clients (psql, an application, the API).

The embedded server stops when the last medpg process using it exits. ``medpg db start`` starts
this module as a detached process that uses the server and waits for SIGTERM (``medpg db stop``);
it records its pid and the server's connection string in the data directory.

    python -m medpg.db.keeper DATA_DIR DATABASE
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

KEEPER_PID = "keeper.pid"
KEEPER_URL = "keeper.url"


def keeper_files(data_dir: Path) -> tuple[Path, Path]:
    """The pid file and the connection-string file of ``data_dir``'s keeper."""
    root = data_dir.expanduser().resolve()
    return root / KEEPER_PID, root / KEEPER_URL


def running_keeper(data_dir: Path) -> int | None:
    """The pid of the keeper of ``data_dir`` if one is alive."""
    import psutil

    pid_file, _ = keeper_files(data_dir)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and "medpg.db.keeper" in " ".join(proc.cmdline()):
            return pid
    except psutil.Error:
        pass
    return None


def main(argv: list[str]) -> int:
    from medpg.db.embedded import libpq_url, start_embedded

    data_dir, database = Path(argv[0]), argv[1]
    url = start_embedded(data_dir, database)
    pid_file, url_file = keeper_files(data_dir)
    url_file.write_text(libpq_url(url) + "\n")
    pid_file.write_text(f"{os.getpid()}\n")

    def stop(_signum: int, _frame: object) -> None:
        # A normal exit: the embedded server's exit handlers stop it if nothing else uses it.
        with contextlib.suppress(OSError):
            pid_file.unlink()
            url_file.unlink()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
