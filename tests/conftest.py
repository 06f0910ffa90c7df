"""Shared test fixtures: the real-data directory, the mBERT tokenizer, skip-if-absent.

The real data lives outside the repository (``$XDIST_DATA``, default ``<repo>/../shared/data``); tests
that need it skip with a clear reason when it is absent, so the suite still runs elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: transformers/huggingface_hub read this when first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("XDIST_DATA", REPO.parent / "shared" / "data"))
# Configs built in code (their defaults read these) resolve to the test data, never to the Hub.
os.environ.setdefault("XDIST_DATA", str(DATA_DIR))
os.environ.setdefault("XDIST_TOKENIZER", str(DATA_DIR / "tokenizers" / "mbert-cased"))
MBERT_TOKENIZER = "tokenizers/mbert-cased"


def require_data(relative: str | os.PathLike) -> Path:
    """``DATA_DIR / relative``, or skip the calling test with a reason naming what is missing."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set XDIST_DATA to the shared data directory)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data directory (skips when absent)."""
    return require_data(".")


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    """Directory of the multilingual BERT (cased) fast tokenizer (skips when absent)."""
    return require_data(MBERT_TOKENIZER)


@pytest.fixture(scope="session")
def mbert_tokenizer(tokenizer_path):
    """The mBERT fast tokenizer, loaded once per session through :func:`xdist.data.tokenizer.load_tokenizer`."""
    from xdist.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def job(tmp_path_factory) -> Path:
    """A tiny real job (16 TyDi QA English examples, prepared shards) for tests that drive the CLI."""
    from tests.cli_helpers import HAS_DATA, make_job

    if not HAS_DATA:
        pytest.skip(f"real data not found: {DATA_DIR} (set XDIST_DATA to the shared data directory)")
    return make_job(tmp_path_factory)
