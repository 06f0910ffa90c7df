"""Process-group setup for one process, torchrun, or the ``deepspeed`` launcher; CPU (gloo) or CUDA (nccl).

The environment variables set by the launchers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) are the source of truth. The ``deepspeed`` launcher also passes ``--local_rank``; the CLI
accepts and ignores it, because the launcher exports ``LOCAL_RANK`` too.

A plain ``python script.py`` gets single-process defaults: without them DeepSpeed falls back to MPI
discovery and fails with ``No module named 'mpi4py'``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist

# Imported before any process group exists, on purpose. torch.distributed.nn.functional binds ``group.WORLD``
# as the default argument of its collectives when it is first imported. transformers imports it (through
# ``modeling_utils``); ``xdist select-teachers`` first imported transformers when it built its model, after
# :func:`setup_distributed`: those defaults then held the world group after ``destroy_process_group``, so
# :func:`cleanup` freed nothing and gloo's worker threads ran on into interpreter shutdown. A gloo worker
# frees the Python tensors of a finished collective (about every other collective) and takes the GIL to do so;
# during finalization Python ends such a thread with pthread_exit, whose unwinding through a noexcept C++
# destructor aborts the process: "terminate called without an active exception", SIGABRT (seen on rank 1 of
# ``xdist select-teachers``, which exits right after its last collective). Imported here, the defaults are None.
import torch.distributed.nn  # noqa: F401  (see above; must stay before any init_process_group)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    """Global rank (0 .. world_size - 1)."""

    local_rank: int
    """Rank on this node; selects the CUDA device."""

    world_size: int
    """Number of processes (data-parallel ranks)."""

    device: torch.device
    """``cuda:<local_rank>`` on GPU nodes, ``cpu`` otherwise."""

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the rank that writes shared files and logs)."""
        return self.rank == 0

    @property
    def device_type(self) -> str:
        """``"cuda"`` or ``"cpu"``."""
        return self.device.type


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def _use_cuda() -> bool:
    # DS_ACCELERATOR=cpu forces CPU even on a GPU machine (tests, debugging).
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "") not in ("cpu",)


def disable_deepspeed_shm_comm() -> None:
    """Stop DeepSpeed JIT-compiling its shared-memory all-reduce op on CPU.

    Why: with the CPU accelerator, every ``init_distributed`` builds the ``deepspeed_shm_comm`` C++
    extension (about 45 s on a fresh machine; no env var or config turns it off). gloo does the same
    collectives without it. DeepSpeed consults ``deepspeed.ops.__compatible_ops__`` (a module-level
    dict whose edits persist, per its own comment) before building, so marking the op incompatible
    skips the build. This pokes a DeepSpeed internal; if the internal is gone in another version the
    function does nothing and the op may be built as before (slower start, same results).
    """
    try:
        import deepspeed.ops

        compatible_ops = deepspeed.ops.__compatible_ops__
    except (ImportError, AttributeError):
        return
    if isinstance(compatible_ops, dict) and "deepspeed_shm_comm" in compatible_ops:
        compatible_ops["deepspeed_shm_comm"] = False


def _default_group_timeout(timeout: timedelta) -> None:
    """Make ``timeout`` the default of every process group created from now on, not just the world group.

    Why: DeepSpeed builds its data-parallel groups with ``torch.distributed.new_group(ranks)``, which takes
    torch's module default (30 minutes), not the world group's timeout, and has no option for it: a
    stopped rank then blocked the others in a gradient reduction for the whole half hour whatever
    ``init_process_group`` was given (measured: no timeout within 120 s with a 6 s world-group timeout).
    ``new_group`` reads the module-level default when called, so setting it here reaches DeepSpeed's groups.
    This pokes a torch internal; if it is gone in another version, only the world group times out.
    """
    from torch.distributed import distributed_c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(distributed_c10d, name, None), timedelta):
            setattr(distributed_c10d, name, timeout)


def _restart_attempt() -> int:
    """torchrun's restart count of this rank when it meets its peers in the launcher's store, else 0."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return 0
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _init_restarted_group(backend: str, rank: int, world_size: int, timeout: timedelta | None) -> None:
    """The world group of a rank restarted by torchrun (``--max-restarts``), with keys of its own attempt.

    Why: the restarted ranks meet again in torchrun's store, which still holds the failed attempt's gloo
    addresses under the same keys; the new ranks then connect to the dead ranks' ports and time out
    (measured with torch 2.13, ``--standalone``: "connectFullMesh failed ... Connection refused"). Prefixing
    the store with the attempt gives every attempt, and the groups DeepSpeed derives from it, fresh keys.
    """
    timeout = timeout or timedelta(minutes=30)
    store = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    prefixed = torch_dist.PrefixStore(f"xdist/attempt_{_restart_attempt()}/", store)
    torch_dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world_size, timeout=timeout)


def setup_distributed(collective_timeout_s: float | None = None) -> DistEnv:
    """Initialise the process group (once) and return this process's :class:`DistEnv`.

    Works in a plain single process (fills ``RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1``
    and a free ``MASTER_PORT`` where unset), under torchrun and under the ``deepspeed`` launcher.
    The backend is ``nccl`` on CUDA and ``gloo`` on CPU. On CPU it also sets
    ``DS_ACCELERATOR=cpu`` if unset and disables the shm all-reduce JIT build (see
    :func:`disable_deepspeed_shm_comm`). ``collective_timeout_s`` bounds every collective of the process
    group (torch's default: 30 minutes), so a dead or stopped peer fails the job instead of hanging it.
    Calling it again returns the same environment.
    """
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    missing = [name for name in ("RANK", "WORLD_SIZE") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"environment variable {missing[0]} is unset while {'WORLD_SIZE' if missing[0] == 'RANK' else 'RANK'} "
            "is set: start the job with torchrun or the deepspeed launcher, or set neither"
        )
    if _env_int("WORLD_SIZE") == 1:
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    missing = [n for n in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
    if missing:
        raise RuntimeError(
            f"environment variable(s) {missing} unset in a {os.environ['WORLD_SIZE']}-process job: "
            "start it with torchrun or the deepspeed launcher (they set them)"
        )

    rank, local_rank, world_size = _env_int("RANK"), _env_int("LOCAL_RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")

    if _use_cuda():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        backend = "gloo"
        disable_deepspeed_shm_comm()

    if not torch_dist.is_initialized():
        import deepspeed

        timeout = {}
        if collective_timeout_s is not None:
            timeout["timeout"] = timedelta(seconds=collective_timeout_s)
            _default_group_timeout(timeout["timeout"])
        if _restart_attempt() > 0:
            _init_restarted_group(backend, rank, world_size, timeout.get("timeout"))
        # Env vars are complete, so DeepSpeed skips its MPI discovery (and adopts a group that exists).
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **timeout)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def is_initialized() -> bool:
    """True once the default process group exists."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_initialized():
        torch_dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group). Objects are pickled by
    torch.distributed between our own ranks only; never pass data read from untrusted files."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_initialized():
        return obj
    holder = [obj]
    torch_dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    """Destroy the process group if one exists (call at the end of a job; safe to call twice).

    Its backend threads are joined here, before interpreter shutdown, only if nothing else still references
    the group (see the ``torch.distributed.nn`` import at the top of this module)."""
    if is_initialized():
        torch_dist.destroy_process_group()
