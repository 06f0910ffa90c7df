"""Reproduce, deterministically, the SIGABRT that ``xdist select-teachers`` met on rank 1 about once in 12
loaded full-suite runs ("terminate called without an active exception"), and show what stops it.

The cause (see the comment above ``import torch.distributed.nn`` in xdist/distributed.py): a module imported
after ``init_process_group`` (torch.distributed.nn.functional, through transformers) keeps the world group
in default arguments, so ``destroy_process_group`` frees nothing and gloo's threads live on into interpreter
shutdown. A gloo worker that frees a collective's tensors then needs the GIL; Python 3.11 ends a thread that
takes the GIL during finalization with pthread_exit, whose unwinding through a noexcept C++ destructor calls
std::terminate.

In the real job the worker is only late by chance (it was preempted on a loaded machine). Here rank 1 makes
it late on purpose: its last all_gather is left in flight with only C++ holding the tensors, rank 0 joins it
once rank 1 sits in its last atexit handler, which holds the GIL in C, and a long switch interval stops rank 1
from handing the GIL over before finalization starts. This is an experiment, not a test: the hand-over relies
on rank 0's one-second sleep outlasting rank 1's way from the collective to its atexit handler.

    DS_ACCELERATOR=cpu .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \
        docs/experiments/gloo_teardown_abort.py late    # rank 1: exitcode -6 (SIGABRT), the message above
    ... gloo_teardown_abort.py early                    # torch.distributed.nn imported before init: exit 0
    ... gloo_teardown_abort.py none                     # never imported: exit 0
    ... gloo_teardown_abort.py xdist                    # xdist.distributed + transformers: exit 0 (aborted
                                                        # before xdist.distributed imported torch.distributed.nn)

Measured on 2 CPU cores, torch 2.13.0, Python 3.11.7: ``late`` aborted 3 runs of 3, ``early``, ``none`` and
``xdist`` exited cleanly 2 of 2 each; ``xdist`` without the early import aborted 2 of 2.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "late"
rank = int(os.environ["RANK"])
if rank == 1:
    sys.setswitchinterval(1e6)  # never yield the GIL on another thread's request, only when blocking
    # Registered first, so it runs last: a C loop that holds the GIL for a few seconds.
    atexit.register(lambda: sum(range(150_000_000)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

if mode == "early":
    import torch.distributed.nn  # noqa: F401  -- before init: its default arguments are None
if mode == "xdist":  # xdist's own setup and cleanup, then the import select-teachers did after setup
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from xdist.distributed import cleanup, setup_distributed

    setup_distributed()
    import transformers.modeling_utils  # noqa: F401
else:
    dist.init_process_group("gloo")
if mode == "late":
    import torch.distributed.nn  # noqa: F401  -- after init: pins the world group, as transformers' import did

if rank == 0:
    time.sleep(1.0)  # by now rank 1 has left main and sits in its atexit handler
outputs = [torch.empty(1000) for _ in range(2)]
work = dist.all_gather(outputs, torch.full((1000,), float(rank)), async_op=True)
if rank == 0:
    work.wait()
del outputs, work  # on rank 1 the in-flight work now holds the only references to the tensors
# "early", "none", "xdist" (fixed): joins rank 1's workers once rank 0 has joined the collective
cleanup() if mode == "xdist" else dist.destroy_process_group()
if rank == 0:
    time.sleep(1.0)
print(f"rank {rank}: leaving main", file=sys.stderr)
