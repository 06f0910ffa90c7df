"""Shared fixtures for the kernel tests.

Without CUDA the Triton kernels run under the interpreter: TRITON_INTERPRET=1 must be set before a
kernel module is imported (``triton.jit`` reads it when decorating). If some earlier test module
already imported a kernel module in compiled mode, it is reloaded here so its kernels are rebuilt
for the interpreter (functions imported from it elsewhere see the new kernels through the module
globals).
"""

import importlib
import os
import secrets
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    for _name in ("kernels.span_kd", "kernels.kd"):
        _mod = sys.modules.get(_name)
        if _mod is not None and os.environ["TRITON_INTERPRET"] == "1":
            importlib.reload(_mod)


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test; it is printed (shown by pytest when the test fails), put into the
    failure report, and can be replayed with XDIST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("XDIST_TEST_SEED", secrets.randbits(31)))
    print(f"[seed] {request.node.nodeid}: replay with XDIST_TEST_SEED={seed}")
    request.node.user_properties.append(("seed", seed))
    return seed


@pytest.fixture
def rng(seed: int) -> torch.Generator:
    """A CPU generator seeded with this test's ``seed``."""
    return torch.Generator().manual_seed(seed)


def pytest_runtest_makereport(item, call):
    """Put the seed into the failure report itself, not only into the captured output."""
    if call.when == "call" and call.excinfo is not None:
        for key, value in item.user_properties:
            if key == "seed":
                item.add_report_section("call", "seed", f"XDIST_TEST_SEED={value}")
