"""Progress of long commands (build, probe): a tqdm bar on a terminal, else one log line every ~30 s.

tqdm draws nothing when stderr is not a terminal (`disable=None`), so a build sent to a log file
was silent for many minutes; `LineProgress` writes done/total, rate and ETA as plain lines instead.
A build counts tokens and gets its ETA from `TokenProgress`'s cost model (see there).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np
from tqdm import tqdm

LOG_INTERVAL_S = 30.0
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"
)
# Without tqdm's ETA (remaining units / recent rate): for a counter whose caller puts its own ETA in the postfix.
OWN_ETA_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}{postfix}"
OWN_ETA_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class LineProgress:
    """A tqdm-like counter that prints one line to `stream` at most every `interval` seconds, and a last
    line on close when it printed any (a run shorter than the interval stays quiet)."""

    def __init__(
        self,
        total: int,
        unit: str,
        desc: str,
        stream: TextIO,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        line_format: str = LINE_FORMAT,
    ):
        self.total, self.unit, self.desc, self.stream, self.interval, self.clock = (
            total,
            unit,
            desc,
            stream,
            interval,
            clock,
        )
        self.line_format = line_format
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

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _print(self) -> None:
        now = self.clock()
        line = tqdm.format_meter(
            self.n,
            self.total,
            now - self.started,
            unit=self.unit,
            prefix=self.desc,
            postfix=self.postfix or None,
            bar_format=self.line_format,
        )
        print(" ".join(line.split()), file=self.stream, flush=True)
        self.last, self.lines, self.printed_n = now, self.lines + 1, self.n


Progress = tqdm | LineProgress


def open_progress(
    total: int,
    unit: str,
    desc: str,
    stream: TextIO | None = None,
    own_eta: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A progress counter for `total` units: a tqdm bar when `stream` (stderr) is a terminal, else log lines
    (timed by `clock`). With `own_eta`, neither shows the counter's own ETA (the caller sets one in the postfix)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return tqdm(
            total=total,
            unit=unit,
            desc=desc,
            dynamic_ncols=True,
            file=stream,
            bar_format=OWN_ETA_BAR_FORMAT if own_eta else None,
        )
    return LineProgress(
        total, unit, desc, stream, clock=clock, line_format=OWN_ETA_LINE_FORMAT if own_eta else LINE_FORMAT
    )


class TokenProgress:
    """A build's progress in real tokens, with an ETA from its measured cost: the wall time of each batch (or
    cluster unit) since the previous one, fitted as a * tokens + b * sum of squared lengths (attention's share
    grows with the length), applied to the rows still to run. Builds run short prompts first, so a rate measured
    on the first rows alone promised an end far too early (an example-count ETA said 01:06 for a 26:52 build)."""

    def __init__(
        self, lengths: np.ndarray, desc: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ):
        lengths = np.asarray(lengths, dtype=np.float64)
        self.counter = open_progress(int(lengths.sum()), "tok", desc, stream, own_eta=True, clock=clock)
        self.left = np.array([lengths.sum(), (lengths**2).sum()])  # tokens and squared lengths still to run
        self.measured: list[tuple[float, float, float]] = []  # (tokens, squared lengths, seconds) per batch
        self.clock = clock
        self.last = clock()

    def skip(self, lengths: np.ndarray) -> None:
        """Rows already written (a resumed build): counted as done, not as measured."""
        self.left -= _work(lengths)
        self.counter.update(int(np.sum(lengths)))
        self.last = self.clock()

    def done(self, lengths: np.ndarray) -> None:
        """Rows just computed (the real lengths of a batch or unit): measured since the previous call."""
        now = self.clock()
        work, seconds = _work(lengths), now - self.last
        self.last = now
        self.left -= work
        self.measured.append((*work, seconds))
        self.counter.set_postfix(
            tok_s=int(work[0] / max(seconds, 1e-9)), ETA=tqdm.format_interval(self.eta()), refresh=False
        )
        self.counter.update(int(work[0]))

    def eta(self) -> float:
        """Seconds to go: the fitted cost of the rows still to run (per-token average while the fit is unsure)."""
        measured = np.array(self.measured)
        work, seconds = measured[:, :2], measured[:, 2]
        per_token = seconds.sum() / max(work[:, 0].sum(), 1.0)
        if len(measured) >= 2 and np.linalg.matrix_rank(work) == 2:
            cost = np.linalg.lstsq(work, seconds, rcond=None)[0]
            if np.all(cost >= 0):
                return float(np.clip(self.left, 0, None) @ cost)
        return float(max(self.left[0], 0.0) * per_token)

    def close(self) -> None:
        self.counter.close()

    def __enter__(self) -> TokenProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _work(lengths: np.ndarray) -> np.ndarray:
    """Tokens and the sum of squared lengths of rows of these lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return np.array([lengths.sum(), (lengths**2).sum()])
