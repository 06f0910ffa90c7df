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
