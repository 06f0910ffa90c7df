"""What a training rank does about faults: termination signals, hangs and non-finite losses.

- :func:`die_with_parent`: a rank (or the launcher under the CLI) is killed when its parent dies, so no
  process of a job outlives the ``xdist`` command that started it, even after ``kill -9``.
- :class:`GracefulStop`: SIGTERM/SIGINT only set a flag; the loop finishes the optimizer step, the ranks
  agree on stopping through the step's all-reduce, write a checkpoint if it fits the grace period
  (``train.signal_grace_s``) and raise :class:`Interrupted`. A second signal stops at once.
- :class:`Watchdog`: a thread that exits the rank when a phase of a step (reading data, forward/backward,
  optimizer step, the step's all-reduce) makes no progress for ``train.watchdog_s``, naming the rank,
  the step and the phase; the launcher then tears the job down. Collectives also time out on their
  own (``train.collective_timeout_s``, :func:`xdist.distributed.setup_distributed`).
- :class:`NonFiniteGuard`: ``train.on_nonfinite`` applied to the values the loop reads back once per
  optimizer step (no extra host sync).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from xdist.errors import UserError

log = logging.getLogger(__name__)

WATCHDOG_EXIT_CODE = 75
"""Exit status of a rank ended by the watchdog."""

_PR_SET_PDEATHSIG = 1


class Interrupted(UserError):
    """Training stopped on a termination signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(UserError, ArithmeticError):
    """A loss part or the gradient norm was non-finite and ``train.on_nonfinite`` says to stop."""


class CollectiveTimeout(UserError, TimeoutError):
    """A collective operation timed out (another rank died, hangs or is stopped); the message names the rank,
    the step and the phase, which is what a user needs rather than gloo's traceback."""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (``PR_SET_PDEATHSIG``).

    No-op off Linux. If the parent is already gone (it died before the call), exit now.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: best effort only
        return
    if os.getppid() != parent:
        os._exit(1)


def is_timeout(error: BaseException) -> bool:
    """Whether a collective's exception is a timeout (gloo and NCCL word it differently)."""
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


class GracefulStop:
    """SIGTERM/SIGINT handler for a training rank: the first signal requests a stop, the second kills."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since: float | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: stop now, the way the signal normally does
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.signum, self.since = signum, time.monotonic()
        log.warning("received %s: finishing the current optimizer step, then stopping",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def grace_left(self, grace_s: float) -> float:
        """Seconds of the grace period left on this rank (all of it if no signal reached this rank)."""
        return grace_s if self.since is None else grace_s - (time.monotonic() - self.since)


class Watchdog:
    """Exits the process if a phase lasts longer than ``timeout_s`` (a daemon thread; None disables)."""

    def __init__(self, timeout_s: float | None, rank: int) -> None:
        self.timeout_s, self.rank = timeout_s, rank
        self._what, self._step, self._since, self._armed = "start-up", 0, time.monotonic(), False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout_s is not None:
            self._thread = threading.Thread(target=self._run, name="xdist-watchdog", daemon=True)
            self._thread.start()

    def phase(self, what: str, step: int) -> None:
        """Enter a phase of optimizer step ``step`` (restarts the clock)."""
        self._what, self._step, self._since, self._armed = what, step, time.monotonic(), True

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No watchdog inside (evaluation, checkpoints, teacher refreshes: bounded by collective timeouts)."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._since, self._armed = time.monotonic(), armed

    def describe(self) -> str:
        return f"rank {self.rank}, step {self._step}, in {self._what}"

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        assert self.timeout_s is not None
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            waited = time.monotonic() - self._since
            if self._armed and waited > self.timeout_s:
                print(
                    f"xdist: watchdog: {self.describe()}: no progress for {waited:.0f} s (train.watchdog_s = "
                    f"{self.timeout_s:g}); another rank has probably died, hangs or is stopped. Exiting so that "
                    "the launcher ends the job.", file=sys.stderr, flush=True,
                )
                os._exit(WATCHDOG_EXIT_CODE)


class NonFiniteGuard:
    """``train.on_nonfinite`` for the once-per-step values: ``stop``, ``skip`` or ``rollback``.

    ``skip`` and ``rollback`` rely on DeepSpeed skipping an optimizer step whose gradients are not finite
    (its overflow check; the loop turns it on for bf16); a non-finite loss makes non-finite gradients.
    More than ``max_consecutive`` non-finite steps in a row stop the run in any policy.
    """

    def __init__(self, policy: str, max_consecutive: int) -> None:
        self.policy, self.max_consecutive = policy, max_consecutive
        self.consecutive = 0

    @staticmethod
    def bad_values(values: dict[str, float], grad_norm: float | None) -> list[str]:
        """Names of the non-finite values (loss parts, then ``grad_norm``)."""
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if grad_norm is not None and not math.isfinite(grad_norm):
            bad.append("grad_norm")
        return bad

    def check(self, step: int, bad: list[str], values: dict[str, float]) -> str:
        """``"ok"``, ``"skip"`` or ``"rollback"`` for this step; raises :class:`NonFiniteError` to stop."""
        if not bad:
            self.consecutive = 0
            return "ok"
        self.consecutive += 1
        shown = ", ".join(f"{name}={values.get(name, float('nan'))}" for name in bad if name in values)
        what = f"step {step}: non-finite {', '.join(bad)}" + (f" ({shown})" if shown else "")
        if self.policy == "stop" or self.consecutive > self.max_consecutive:
            why = ("train.on_nonfinite is 'stop'" if self.policy == "stop" else
                   f"{self.consecutive} non-finite steps in a row (train.max_nonfinite_steps = {self.max_consecutive})")
            raise NonFiniteError(
                f"{what}; stopped because {why}. No checkpoint or export was written from the non-finite state; "
                "the last checkpoint is intact. Lower train.lr, check the data, or use bf16/fp32 instead of fp16"
            )
        log.warning("%s: optimizer step skipped%s (%d in a row)", what,
                    ", rolling back to the last checkpoint" if self.policy == "rollback" else "", self.consecutive)
        return self.policy


def json_safe(record: dict) -> dict:
    """``record`` with non-finite floats replaced by None and listed under ``"nonfinite"`` (valid JSON)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}
