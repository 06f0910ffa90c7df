"""Logging for training runs: console lines, TensorBoard scalars/images/hparams, progress bars.

Only the main rank writes; every other rank gets a monitor whose methods do nothing, so the training
loop calls it unconditionally. TensorBoard is written with ``torch.utils.tensorboard.SummaryWriter``
(no TensorFlow needed) under ``<output_dir>/tensorboard``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("xdist")


def setup_logging(rank: int = 0) -> None:
    """Console logging: INFO on the main rank, WARNING elsewhere, with the rank in every line."""
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("xdist")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def show_progress(is_main: bool, stream: Any = None) -> bool:
    """Whether a tqdm bar should be drawn: on the main rank, and only when ``stream`` (stderr by default) is a
    terminal. Written to a log file a bar is one long line of carriage returns and no information the log
    lines do not already carry; the training bar (:class:`Progress`) follows the same rule."""
    stream = sys.stderr if stream is None else stream
    return is_main and bool(getattr(stream, "isatty", lambda: False)())


class Monitor:
    """TensorBoard + console sink for one run. A no-op on non-main ranks."""

    def __init__(self, output_dir: str | Path, enabled: bool):
        self.enabled = enabled
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.logdir = Path(output_dir) / "tensorboard"
            self._writer = SummaryWriter(log_dir=str(self.logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``{tag: value}`` at ``step``; None values are skipped (e.g. no grad norm yet)."""
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        """Log an H×W×3 uint8 image (e.g. the G-XLT heatmap)."""
        if self._writer is None:
            return
        self._writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Log the run's hyper-parameters with its final metrics (TensorBoard's HPARAMS tab)."""
        if self._writer is None:
            return
        flat = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()}
        self._writer.add_hparams(flat, metrics, run_name=".")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TrainProgress:
    """The training progress bar (steps, loss, samples/s, ETA) on the main rank.

    On a terminal it is a tqdm bar, and the ``xdist`` log lines are routed through tqdm so they print above
    it. Elsewhere (a log file, CI) there is no bar: the log line every ``train.log_every`` steps carries
    the same numbers, ETA included (:meth:`eta`), instead of a stream of carriage returns.
    """

    def __init__(self, total: int, initial: int, samples_per_step: int, *, enabled: bool, stream: Any = None):
        self.total, self.done, self.samples_per_step = total, initial, samples_per_step
        self._start, self._start_step = time.perf_counter(), initial
        self._last = self._start
        self._rate: float | None = None
        self.bar = None
        self._redirect = None
        stream = sys.stderr if stream is None else stream
        if show_progress(enabled, stream):
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=stream, dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("xdist")])
            self._redirect.__enter__()

    def step(self, loss: float) -> None:
        """One optimizer step done with mean loss ``loss``."""
        now = time.perf_counter()
        rate = self.samples_per_step / max(now - self._last, 1e-9)
        self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate  # smoothed samples/s
        self._last = now
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {self._rate:.1f} samples/s", refresh=False)
            self.bar.update(1)

    def pause(self) -> None:
        """After an evaluation or checkpoint: that time does not count towards samples/s."""
        self._last = time.perf_counter()

    def eta(self) -> str:
        """Time left at the average pace since the start (``h:mm:ss``; ``-`` before the first step)."""
        steps = self.done - self._start_step
        if steps <= 0:
            return "-"
        left = (self.total - self.done) * (time.perf_counter() - self._start) / steps
        minutes, seconds = divmod(int(left + 0.5), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


class Throughput:
    """Samples/s and tokens/s over the window since the last call to :meth:`rate`."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._samples = 0
        self._tokens = 0

    def add(self, samples: int, tokens: int) -> None:
        self._samples += samples
        self._tokens += tokens

    def reset(self) -> None:
        """Start a new window (after an evaluation or checkpoint, so they don't count as training time)."""
        self._start, self._samples, self._tokens = time.perf_counter(), 0, 0

    def rate(self) -> tuple[float, float]:
        """(samples/s, tokens/s) since the previous call; resets the window."""
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        rates = (self._samples / elapsed, self._tokens / elapsed)
        self.reset()
        return rates


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"a.b": value}`` for hparams."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(config, list):
        out[prefix[:-1]] = str(config)
    else:
        out[prefix[:-1]] = config
    return out
