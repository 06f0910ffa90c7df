"""xdist demo's decisions (tokenizer, config, offline refusal); the full demo is the README's measured job."""

from __future__ import annotations

import subprocess
import sys

from tests.cli_helpers import ENV, REPO
from xdist.demo import HUB_TOKENIZER, demo_config, demo_tokenizer


def test_tokenizer_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("XDIST_TOKENIZER", raising=False)
    assert demo_tokenizer(tmp_path) == HUB_TOKENIZER  # no local copy: the Hub id
    local = tmp_path / "tokenizers" / "mbert-cased"
    local.mkdir(parents=True)
    (local / "tokenizer.json").write_text("{}")
    assert demo_tokenizer(tmp_path) == str(local)  # a local copy wins
    monkeypatch.setenv("XDIST_TOKENIZER", "/my/tok")
    assert demo_tokenizer(tmp_path) == "/my/tok"  # an explicit choice wins over both
    assert demo_config(None) == REPO / "configs" / "demo.yaml"


def test_offline_demo_without_data_is_refused_in_one_paragraph(tmp_path):
    env = {**ENV, "XDIST_DATA": str(tmp_path / "empty")}
    result = subprocess.run([sys.executable, "-m", "xdist.cli", "demo", "--offline"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("xdist demo: error")]
    assert len(errors) == 1 and "'tydiqa' is not in" in errors[0] and "offline" in errors[0], result.stderr
    assert not (tmp_path / "runs").exists()


def test_second_demo_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from xdist.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "train_log.jsonl").write_text('{"step": 1}\n')
    capsys.readouterr()
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "already holds a demo run" in err and "xdist demo --overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["train_log.jsonl"]  # no shards
