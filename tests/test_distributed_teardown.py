"""``xdist.distributed.cleanup`` really destroys the process group, even when a module imported after
``setup_distributed`` captured ``group.WORLD`` (torch.distributed.nn.functional does, in default arguments,
and transformers imports it).

Why it matters: a group that outlives ``cleanup`` keeps gloo's worker threads running into interpreter
shutdown; one that then frees a collective's tensors takes the GIL and Python 3.11 ends it with pthread_exit
inside a noexcept C++ destructor: "terminate called without an active exception", SIGABRT (rank 1 of
``xdist select-teachers``, about 1 run in 12 on a loaded machine). The check is on the cause, deterministically:
every thread the group started is gone once ``cleanup`` returns.

Each case runs in a fresh interpreter: the late import has to be the first import of the module, and the
pytest process must not hold a process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli_helpers import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")

SCRIPT = """
import importlib, json, os, sys
import xdist.distributed as xd

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

before = threads()
xd.setup_distributed()  # one process: gloo, with its store, I/O loop and worker threads
during = threads()
importlib.import_module(sys.argv[1])  # what select-teachers imported only after the group existed
xd.cleanup()
print(json.dumps({"before": before, "during": during, "after": threads()}))
"""


@pytest.mark.parametrize("late_import", ["torch.distributed.nn", "transformers.modeling_utils"])
def test_cleanup_joins_the_group_threads_after_a_late_import(late_import):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, late_import], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    threads = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(threads["during"]) > len(threads["before"]), threads  # the group did start threads
    assert threads["after"] == threads["before"], (
        f"threads of the process group outlived cleanup() after importing {late_import}: {threads}"
    )
