"""Progress: a bar on a terminal, a line every ~30 s in a log (stderr not a terminal), for build and probe."""

import io

from tqdm import tqdm

from featstore.progress import LineProgress, open_progress, track


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


def test_track_yields_every_item_and_counts_it(monkeypatch):
    counters = []
    real = open_progress

    def recorded(*args, **kwargs):
        counters.append(real(*args, stream=io.StringIO()))
        return counters[-1]

    monkeypatch.setattr("featstore.progress.open_progress", recorded)
    assert list(track(["a", "b", "c"], "probe", "probe")) == ["a", "b", "c"]
    assert counters[0].n == 3 and counters[0].total == 3
