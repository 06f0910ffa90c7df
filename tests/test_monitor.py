"""The training progress bar: a tqdm bar on a terminal, ETA in the log lines elsewhere."""

from __future__ import annotations

import io
import logging
import time

from xdist.monitor import TrainProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_shows_steps_loss_and_rate():
    out = Terminal()
    progress = TrainProgress(total=4, initial=1, samples_per_step=64, enabled=True, stream=out)
    for loss in (2.5, 2.25):
        time.sleep(0.01)
        progress.step(loss)
    progress.close()
    text = out.getvalue()
    assert "train" in text and "3/4" in text and "loss 2.2500" in text and "samples/s" in text
    assert progress.eta() != "-"


def test_no_bar_when_not_a_terminal_or_not_the_main_rank():
    for out, enabled in ((io.StringIO(), True), (Terminal(), False)):
        progress = TrainProgress(total=10, initial=0, samples_per_step=8, enabled=enabled, stream=out)
        assert progress.eta() == "-"
        progress.step(1.0)
        progress.close()
        assert progress.bar is None and out.getvalue() == ""
        assert logging.getLogger("xdist").handlers == [] or all(
            "tqdm" not in type(h).__name__.lower() for h in logging.getLogger("xdist").handlers)


def test_eta_counts_the_remaining_steps_at_the_pace_so_far():
    progress = TrainProgress(total=11, initial=1, samples_per_step=8, enabled=False)
    progress._start -= 20.0  # 20 s for the first 5 steps: 4 s a step, 5 steps left
    for _ in range(5):
        progress.step(1.0)
    assert progress.eta() == "0:00:20"
