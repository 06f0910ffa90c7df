"""Tokenizers and models by Hugging Face Hub id or local directory (xdist.hub), offline.

The Hub cache is a temporary ``HF_HOME``: empty (an id that is not cached fails with one sentence), or
holding a snapshot laid out as ``huggingface_hub`` writes it (the id then resolves without a network).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.cli_helpers import CONFIG, ENV, REPO
from tests.conftest import DATA_DIR, require_data
from xdist.hub import is_hub_id, resolve_pretrained


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert is_hub_id("bert-base-multilingual-cased") and is_hub_id("FacebookAI/xlm-roberta-large")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./tok") and not is_hub_id("~/tok")
    assert not is_hub_id("a/b/c")
    assert resolve_pretrained(str(tmp_path), field="features.tokenizer") == tmp_path
    (tmp_path / "local-name").mkdir()
    assert resolve_pretrained(tmp_path / "local-name", field="x") == tmp_path / "local-name"


def run(code_or_args: list[str], hf_home, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", **env})


def test_uncached_hub_id_offline_is_one_sentence(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(CONFIG.format(data=DATA_DIR, shards=tmp_path / "shards", out=tmp_path / "run", repo=REPO))
    result = run(["-m", "xdist.cli", "prepare", str(config),
                  "--set", "features.tokenizer=bert-base-multilingual-cased"], tmp_path / "hf")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    assert "features.tokenizer 'bert-base-multilingual-cased' is neither a local directory nor in the Hugging " \
           "Face cache" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local copy" in lines[0]
    assert lines[0].count(". ") == 0, "one sentence"


def test_cached_hub_id_resolves_offline_to_its_snapshot(tmp_path):
    """A snapshot in the cache (huggingface_hub's layout) is found offline and loads as a fast tokenizer."""
    local = require_data("tokenizers/mbert-cased")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--google-bert--bert-base-multilingual-cased"
    shutil.copytree(local, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = ("from xdist.data.features import load_tokenizer, tokenizer_directory; "
            "t = load_tokenizer('google-bert/bert-base-multilingual-cased'); "
            "print(tokenizer_directory('google-bert/bert-base-multilingual-cased')); print(len(t), t.is_fast)")
    result = run(["-c", code], tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    directory, sizes = result.stdout.splitlines()[-2:]
    assert directory == str(repo / "snapshots" / revision)
    assert sizes == "119547 True"
