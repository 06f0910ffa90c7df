"""``xdist train/eval --nproc N``: start torchrun with N local ranks and supervise it, so that nothing of
the job outlives the ``xdist`` process.

- torchrun runs in its own process group; SIGTERM/SIGINT/SIGHUP to ``xdist`` are forwarded to that group
  (torchrun forwards them to the ranks, which finish their step and may checkpoint within
  ``train.signal_grace_s``), and whatever is still alive after the grace period is killed.
- torchrun gets SIGTERM when ``xdist`` dies, even by ``kill -9`` (``PR_SET_PDEATHSIG``), and the ranks set
  the same for themselves (:func:`xdist.faults.die_with_parent`), so a killed launcher takes them along.
- ``--max-restarts N`` is torchrun's elastic restart: after a rank fails, all ranks start again and resume
  from the newest verified checkpoint of the run (:func:`xdist.train.train`); ``XDIST_RUN_ID`` tells the
  restarted ranks which checkpoints are the run's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from xdist.faults import die_with_parent

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_TORCHRUN_MARGIN_S = 10
"""Seconds beyond the ranks' grace period that torchrun waits before it SIGKILLs them."""


def torchrun_command(module_args: list[str], *, nproc: int, max_restarts: int, grace_s: float) -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``python -m xdist.cli <module_args>`` on N ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}", f"--shutdown-timeout={int(grace_s) + _TORCHRUN_MARGIN_S}",
        "-m", "xdist.cli", *module_args,
    ]


def run_supervised(command: list[str], env: dict[str, str], *, grace_s: float) -> int:
    """Run ``command`` (torchrun) in a new process group until it exits; forward termination signals.

    Returns torchrun's exit status, or 128 + the signal number when a signal stopped the job.
    """
    env = {**env, "XDIST_RUN_ID": env.get("XDIST_RUN_ID") or uuid.uuid4().hex}
    proc = subprocess.Popen(
        command, env=env, start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM)
    )
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        deadline = None
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and deadline is None:
                deadline = time.monotonic() + grace_s + 2 * _TORCHRUN_MARGIN_S
            if deadline is not None and time.monotonic() > deadline:
                print(f"xdist: the job did not stop within {grace_s:g} s of {signal.Signals(received[0]).name} "
                      "(train.signal_grace_s); killing it", file=sys.stderr, flush=True)
                _kill_group(proc.pid)
                code = proc.wait()
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _kill_group(proc.pid)  # nothing of the job survives it (ranks also die with torchrun)
    return 128 + received[0] if received else code


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
