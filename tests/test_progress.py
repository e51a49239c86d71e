"""Progress: a bar on a terminal, a line every ~30 s in a log (stderr not a terminal), for build and probe."""

import io

import numpy as np
import pytest
from tqdm import tqdm

from featstore.progress import LineProgress, TokenProgress, open_progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_gets_done_total_rate_and_eta_every_interval_and_a_last_line():
    stream, clock = io.StringIO(), Clock()
    counter = LineProgress(1000, "ex", "build m", stream, interval=30, clock=clock)
    counter.update(100)
    clock.now = 29
    counter.update(100)
    assert stream.getvalue() == ""
    clock.now = 40
    counter.set_postfix(tok_s=1234)
    counter.update(200)
    clock.now = 50
    counter.update(600)
    counter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "build m: 400/1000 ex (40%), 10.00ex/s, elapsed 00:40, ETA 01:00, tok_s=1234"
    assert lines[1].startswith("build m: 1000/1000 ex (100%)") and len(lines) == 2


def test_a_run_shorter_than_the_interval_prints_nothing():
    stream, clock = io.StringIO(), Clock()
    with LineProgress(10, "probe", "probe", stream, interval=30, clock=clock) as counter:
        counter.update(10)
        clock.now = 5
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_anything_else_log_lines():
    assert isinstance(open_progress(5, "ex", "build", stream=io.StringIO()), LineProgress)
    bar = open_progress(5, "ex", "build", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_token_progress_counts_tokens_and_its_eta_prices_the_long_rows_still_to_come():
    """Short rows first, long last, each batch taking a * tokens + b * squared lengths: once two batch shapes
    are measured the ETA is the exact time left, where tokens / recent rate would promise far too little."""
    a, b = 1e-3, 1e-4
    batches = [np.full(8, 10), np.full(4, 20), np.full(2, 200), np.full(1, 400)]
    stream, clock = io.StringIO(), Clock()
    progress = TokenProgress(np.concatenate(batches), "build m", stream, clock=clock)
    progress.counter.interval = 0  # a log line on every update
    cost = [a * rows.sum() + b * (rows.astype(float) ** 2).sum() for rows in batches]
    for done in range(2):
        clock.now += cost[done]
        progress.done(batches[done])
    left = sum(cost[2:])
    assert progress.eta() == pytest.approx(left)
    tokens_left = sum(rows.sum() for rows in batches[2:])
    assert tokens_left * cost[1] / batches[1].sum() < left / 5  # the rate of the last batch alone: far too early
    line = stream.getvalue().splitlines()[-1]
    assert line == (
        f"build m: 160/960 tok (17%), {160 / sum(cost[:2]):.2f}tok/s, elapsed 00:00, "
        f"tok_s={int(80 / cost[1])}, ETA={tqdm.format_interval(left)}"
    )


def test_token_progress_skips_rows_already_written_and_falls_back_to_the_mean_rate():
    stream, clock = io.StringIO(), Clock()
    progress = TokenProgress(np.array([5, 5, 5, 5]), "build m", stream, clock=clock)
    progress.skip(np.array([5, 5]))
    clock.now = 2.0
    progress.done(np.array([5]))  # one shape measured: seconds per token, 0.4
    assert progress.counter.n == 15
    assert progress.eta() == pytest.approx(2.0)
    progress.close()
