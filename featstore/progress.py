"""Progress of long commands (build, probe): a tqdm bar on a terminal, else one log line every ~30 s.

tqdm draws nothing when stderr is not a terminal (`disable=None`), so a build sent to a log file
was silent for many minutes; `LineProgress` writes done/total, rate and ETA as plain lines instead.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator, Sequence, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 30.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"


class LineProgress:
    """A tqdm-like counter that prints one line to `stream` at most every `interval` seconds, and a last
    line on close when it printed any (a run shorter than the interval stays quiet)."""

    def __init__(self, total: int, unit: str, desc: str, stream: TextIO, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.unit, self.desc, self.stream, self.interval, self.clock = total, unit, desc, stream, interval, clock
        self.n, self.postfix, self.lines, self.printed_n = 0, "", 0, 0
        self.started = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self._print()

    def set_postfix(self, refresh: bool = False, **values: object) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self.lines and self.n != self.printed_n:
            self._print()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _print(self) -> None:
        now = self.clock()
        line = tqdm.format_meter(self.n, self.total, now - self.started, unit=self.unit, prefix=self.desc,
                                 postfix=self.postfix or None, bar_format=LINE_FORMAT)
        print(" ".join(line.split()), file=self.stream, flush=True)
        self.last, self.lines, self.printed_n = now, self.lines + 1, self.n


Progress = tqdm | LineProgress


def open_progress(total: int, unit: str, desc: str, stream: TextIO | None = None) -> Progress:
    """A progress counter for `total` units: a tqdm bar when `stream` (stderr) is a terminal, else log lines."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=stream)
    return LineProgress(total, unit, desc, stream)


def track(items: Sequence[T], unit: str, desc: str) -> Iterator[T]:
    """Iterate over `items`, counting each one done in an `open_progress` counter."""
    with open_progress(len(items), unit, desc) as progress:
        for item in items:
            yield item
            progress.update()
