"""Tokenizers and models by Hugging Face Hub id or local directory (xdist.hub), offline.

The Hub cache is a temporary directory: empty (an id that is not cached fails with one sentence), or
holding a snapshot laid out as ``huggingface_hub`` writes it (the id then resolves without a network).
Tests run with ``HF_HUB_OFFLINE=1`` (tests/conftest.py).
"""

from __future__ import annotations

import shutil

import pytest

from tests.cli_helpers import CONFIG, REPO
from tests.conftest import DATA_DIR, require_data
from xdist import hub
from xdist.hub import is_hub_id, resolve_pretrained


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face Hub cache for this test (huggingface_hub reads the constant at call time)."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "tests must run with HF_HUB_OFFLINE=1"
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "_resolved", {})
    return cache


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert is_hub_id("bert-base-multilingual-cased") and is_hub_id("FacebookAI/xlm-roberta-large")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./tok") and not is_hub_id("~/tok")
    assert not is_hub_id("a/b/c")
    assert resolve_pretrained(str(tmp_path), field="features.tokenizer") == tmp_path
    (tmp_path / "local-name").mkdir()
    assert resolve_pretrained(tmp_path / "local-name", field="x") == tmp_path / "local-name"


def test_uncached_hub_id_offline_is_one_sentence(tmp_path, hub_cache, capsys):
    from xdist.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(CONFIG.format(data=DATA_DIR, shards=tmp_path / "shards", out=tmp_path / "run", repo=REPO))
    capsys.readouterr()
    assert main(["prepare", str(config), "--set", "features.tokenizer=bert-base-multilingual-cased"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "features.tokenizer 'bert-base-multilingual-cased' is neither a local directory nor in the Hugging " \
           "Face cache" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local copy" in lines[0]
    assert lines[0].count(". ") == 0, "one sentence"


def test_cached_hub_id_resolves_offline_to_its_snapshot(hub_cache):
    """A snapshot in the cache (huggingface_hub's layout) is found offline and loads as a fast tokenizer."""
    from xdist.data.tokenizer import load_tokenizer, tokenizer_directory

    local = require_data("tokenizers/mbert-cased")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--google-bert--bert-base-multilingual-cased"
    shutil.copytree(local, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    name = "google-bert/bert-base-multilingual-cased"
    assert tokenizer_directory(name) == (repo / "snapshots" / revision).resolve()
    tokenizer = load_tokenizer(name)
    assert len(tokenizer) == 119547 and tokenizer.is_fast
