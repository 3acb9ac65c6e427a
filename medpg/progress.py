"""Progress of long jobs (ingest, embed, eval): a tqdm bar on a terminal, plain lines otherwise.

A bar redrawn with carriage returns is one unreadable line in a log file or CI output, and a
disabled one leaves that log silent for minutes. When stderr is not a terminal, the same tqdm
counter writes one line every ``interval`` seconds instead (counts, percentage, rate, elapsed
time), plus a first and a last line. Counts only: never document or query text.
"""

from __future__ import annotations

import re
import sys
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

#: Seconds between progress lines when the output is not a terminal.
DEFAULT_INTERVAL = 5.0

_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f}%), {rate_fmt}, {elapsed} elapsed"
_OPEN_LINE_FORMAT = "{desc}: {n_fmt}{unit}, {rate_fmt}, {elapsed} elapsed"  # total not known


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines.

    A line whose counts (the part before the rate) repeat the previous one's is dropped: the
    closing redraw of a finished counter says nothing new.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last_counts = ""

    def write(self, text: str) -> None:
        for piece in text.replace("\r", "\n").split("\n"):
            # tqdm pads a rate under 10 to five characters (" 4.90 chunks/s"): one space is enough
            line = re.sub(r", +", ", ", piece.rstrip())
            counts = line.split(", ", 1)[0]
            if line and counts != self._last_counts:
                self.stream.write(line + "\n")
                self._last_counts = counts
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    total: int | None,
    *,
    desc: str,
    unit: str,
    enabled: bool | None = None,
    interval: float = DEFAULT_INTERVAL,
    stream: IO[str] | None = None,
) -> tqdm:
    """A tqdm counter of ``total`` (None: not known) ``unit``s (plural, e.g. "chunks").

    ``enabled``: False shows nothing; True or None shows a bar when ``stream`` (default stderr) is
    a terminal and a line every ``interval`` seconds when it is not.
    """
    from tqdm import tqdm

    out = stream if stream is not None else sys.stderr
    if enabled is False:
        return tqdm(total=total, disable=True)
    if out.isatty():
        return tqdm(total=total, desc=desc, unit=f" {unit}", file=out)
    return tqdm(
        total=total,
        desc=desc,
        unit=f" {unit}",
        file=_Lines(out),
        mininterval=max(interval, 0.0),
        miniters=1,  # the interval alone decides: no rate-based skipping of updates
        smoothing=0,  # the average rate since the start: what a log reader wants
        ascii=True,
        bar_format=_LINE_FORMAT if total is not None else _OPEN_LINE_FORMAT,
    )


__all__ = ["DEFAULT_INTERVAL", "progress_bar"]
