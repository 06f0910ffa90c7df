"""User errors through the real CLI: one paragraph on stderr, a non-zero exit, no traceback — once under --nproc.

Each case is a mistake a user makes (a config typo, a wrong path, training before preparing, reusing a
run directory); the message must say what is wrong and where, and nothing else may be printed as an error.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_helpers import CONFIG, ENV, HAS_DATA, REPO
from tests.conftest import DATA_DIR

needs_data = pytest.mark.skipif(not HAS_DATA, reason=f"real data not found at {DATA_DIR}")


def run_cli(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xdist.cli", *args], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_paragraph(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """The run failed with exactly one error paragraph naming ``fragments``, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert "ChildFailedError" not in output and "FAILED" not in output, output[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"xdist {command}: error")]
    assert len(errors) == 1, result.stderr[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(CONFIG.format(data=DATA_DIR, shards=tmp_path / "shards", out=tmp_path / "run", repo=REPO))
    return path


def test_config_mistakes_name_the_field(config):
    assert_one_paragraph(run_cli("train", str(config), "--set", "train.lrr=1"), "train", "'train.lrr'")
    assert_one_paragraph(run_cli("prepare", str(config), "--set", "train.lr=fast"), "prepare", "'train.lr'",
                         "expected a number")
    assert_one_paragraph(run_cli("train", "missing.yaml"), "train", "missing.yaml", "does not exist")


def test_debug_shows_the_traceback(config):
    result = run_cli("train", str(config), "--set", "train.lrr=1", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr and "ConfigError" in result.stderr
    result = run_cli("train", str(config), "--set", "train.lrr=1", env={**ENV, "XDIST_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr


def run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process (no interpreter start-up): for errors raised before any launch."""
    from xdist.cli import main

    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


@needs_data
def test_missing_data_tokenizer_and_checkpoint(config, tmp_path, capsys):
    result = run_in_process(capsys, "prepare", str(config), "--set", f"data.root={tmp_path / 'nowhere'}")
    message = assert_one_paragraph(result, "prepare", "tydiqa.goldp.en.train.json", "does not exist")
    assert "xdist data fetch tydiqa" in message
    assert_one_paragraph(run_in_process(capsys, "prepare", str(config), "--set",
                                        f"features.tokenizer={tmp_path / 'no-tok'}"), "prepare", "no-tok")
    (tmp_path / "not-a-model").mkdir()
    assert_one_paragraph(run_in_process(capsys, "eval", str(config), "--checkpoint", str(tmp_path / "not-a-model")),
                         "eval", "not-a-model", "config.json")


def test_resume_without_checkpoint_and_contradicting_flags(config, tmp_path):
    assert_one_paragraph(run_cli("train", str(config), "--resume"), "train", "--resume", "no checkpoint")
    assert_one_paragraph(run_cli("train", str(config), "--resume", "--overwrite"), "train", "contradict")


@pytest.mark.slow
@needs_data
def test_train_before_prepare_is_reported_once_under_nproc(config):
    """Both ranks hit the missing manifest; the launcher prints the paragraph once, without torchrun's box."""
    result = run_cli("train", str(config), "--nproc", "2")
    assert_one_paragraph(result, "train", "manifest", "xdist prepare")
