"""End to end through the CLI: prepare → train on 2 gloo ranks (ZeRO-2/3, fp32/bf16) → export → eval.

Each training run is a real multi-process DeepSpeed job (``xdist train --nproc 2``), on a tiny model
and a fixed small training set (16 TyDi QA English features), so the loss must fall as it memorises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli_helpers import ENV, HAS_DATA, REPO, interrupted_copy, step_losses, xdist
from tests.conftest import DATA_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_DATA, reason=f"shared data not found at {DATA_DIR}"),
]


@pytest.mark.parametrize(("stage", "precision"), [(2, "fp32"), (2, "bf16"), (3, "fp32"), (3, "bf16")])
def test_two_rank_training_reduces_loss(job, tmp_path, stage, precision):
    out = tmp_path / "run"
    xdist("train", str(job), "--nproc", "2", "--set", f"train.deepspeed={REPO}/configs/deepspeed/zero{stage}.json",
          "--set", f"train.precision={precision}", "--set", f"train.output_dir={out}", "--set", "eval.sets=[]",
          "--set", "train.export=false")
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 17))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < 0.7 * first, f"ZeRO-{stage} {precision}: loss {first:.3f} -> {last:.3f}"
    resolved = json.loads((out / "ds_config.json").read_text())
    assert resolved["zero_optimization"]["stage"] == stage
    assert resolved["bf16"]["enabled"] is (precision == "bf16")


def test_export_eval_and_tensorboard(job, tmp_path):
    """ZeRO-3 run with evaluation: the export loads in plain transformers and `xdist eval` reproduces the
    in-training evaluation exactly; MLQA files are read by their distributed names; TensorBoard has it all."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForQuestionAnswering

    out = tmp_path / "run"
    xdist("train", str(job), "--nproc", "2", "--set", f"train.deepspeed={REPO}/configs/deepspeed/zero3.json",
          "--set", f"train.output_dir={out}", "--set", "train.eval_every=8")

    model = AutoModelForQuestionAnswering.from_pretrained(out / "export", local_files_only=True)
    assert model.config.hidden_size == 32 and (out / "export" / "model.safetensors").is_file()

    trained = json.loads((out / "eval" / "final" / "metrics.json").read_text())["sets"]["xquad"]
    assert {(c["question_lang"], c["context_lang"]) for c in trained["cells"]} == {
        ("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")}
    assert (out / "eval" / "step8" / "metrics.json").is_file()
    assert (out / "eval" / "final" / "predictions" / "xquad" / "de-en.json").is_file()

    # The same set evaluated from the export, in one process, must give the same numbers.
    xdist("eval", str(job), "--checkpoint", str(out / "export"), "--out", str(tmp_path / "eval"))
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["sets"]["xquad"]
    assert again["g_xlt"] == pytest.approx(trained["g_xlt"], abs=1e-6)
    assert again["cells"] == trained["cells"]

    # MLQA by its distributed names: build dev-context-<c>-question-<q>.json files from XQuAD.
    mlqa = tmp_path / "mlqa"
    mlqa.mkdir()
    xquad = {lang: json.loads((DATA_DIR / "xquad" / f"xquad.{lang}.json").read_text()) for lang in ("en", "de")}
    for q in ("en", "de"):
        for c in ("en", "de"):
            data = json.loads(json.dumps(xquad[c]))
            questions = {qa["id"]: qa["question"] for a in xquad[q]["data"] for p in a["paragraphs"] for qa in p["qas"]}
            for article in data["data"]:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        qa["question"] = questions[qa["id"]]
            (mlqa / f"dev-context-{c}-question-{q}.json").write_text(json.dumps(data))
    mlqa_set = f"eval.sets=[{{name: mlqa, format: mlqa, path: {mlqa}, max_examples: 12}}]"
    xdist("eval", str(job), "--checkpoint", str(out / "export"), "--out", str(tmp_path / "eval-mlqa"),
          "--set", mlqa_set)
    metrics = json.loads((tmp_path / "eval-mlqa" / "metrics.json").read_text())["sets"]["mlqa"]
    assert metrics["num_cells"] == 4
    assert {c["normalizer"] for c in metrics["cells"]} == {"mlqa-v1:en", "mlqa-v1:de"}

    accumulator = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s",
                "eval/xquad/g_xlt_f1", "eval/xquad/xlt_f1", "eval/xquad/f1/de-en"):
        assert tag in tags["scalars"], f"{tag} missing from TensorBoard: {tags['scalars']}"
    assert [e.step for e in accumulator.Scalars("eval/xquad/g_xlt_f1")] == [8, 16]
    assert "eval/xquad/g_xlt_heatmap" in tags["images"]
    lrs = [e.value for e in accumulator.Scalars("train/lr")]
    assert lrs[-1] < lrs[0], "learning rate should decay linearly"


def test_resume_continues_with_identical_losses(job, tmp_path):
    """Stop after step 8 of 16 (fp32, dropout on): the resumed run logs the same loss at every later step."""
    full = tmp_path / "full"
    common = ["--nproc", "2", "--set", "eval.sets=[]", "--set", "train.export=false",
              "--set", "train.checkpoint_every=8", "--set", "model.dropout=0.1", "--set", "data.num_workers=1"]
    xdist("train", str(job), *common, "--set", f"train.output_dir={full}")
    reference = step_losses(full)

    # The interrupted run: the state a run killed after its step-8 checkpoint leaves on disk.
    cut = interrupted_copy(full, tmp_path / "cut", 8)

    xdist("train", str(job), *common, "--set", f"train.output_dir={cut}", "--resume")
    resumed = step_losses(cut)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(9, 17):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), f"step {step}"


SHORT = ["--set", "train.max_steps=4", "--set", "eval.sets=[]", "--set", "train.export=false"]


def launch_env(**extra: str) -> dict[str, str]:
    return {**ENV, "PYTHON": sys.executable, **extra}


def test_single_process_without_launcher(job, tmp_path):
    """One process, no launcher; then a second train into the finished run is refused and changes nothing."""
    xdist("train", str(job), *SHORT, "--set", f"train.output_dir={tmp_path}")
    assert sorted(step_losses(tmp_path)) == [1, 2, 3, 4]

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    again = subprocess.run([sys.executable, "-m", "xdist.cli", "train", str(job), *SHORT,
                            "--set", f"train.output_dir={tmp_path}"], cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    assert snapshot() == before


def test_two_nodes_through_torchrun_script(job, tmp_path):
    """launch/torchrun.sh as two 'nodes' (one rank each) meeting at a c10d rendezvous on loopback."""
    from xdist.distributed import free_port

    env = launch_env(NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                     RDZV_ID=f"test-{tmp_path.name}")
    args = ["bash", str(REPO / "launch" / "torchrun.sh"), str(job), *SHORT, "--set", f"train.output_dir={tmp_path}"]
    nodes = [subprocess.Popen(args, cwd=REPO, env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, 9)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sorted(step_losses(tmp_path)) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "ds_config.json").read_text())["train_batch_size"] == 2 * 4


def test_deepspeed_launcher_with_hostfile(job, tmp_path):
    """launch/deepspeed.sh: DeepSpeed's own launcher, hostfile 'localhost slots=2', --local_rank passed on."""
    from xdist.distributed import free_port

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = launch_env(HOSTFILE=str(hostfile), MASTER_PORT=str(free_port()), DEEPSPEED_ARGS="--no_ssh_check")
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "deepspeed.sh"), str(job), *SHORT,
         "--set", f"train.output_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(step_losses(tmp_path / "run")) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "ds_config.json").read_text())["train_batch_size"] == 2 * 4


def test_slurm_script_parses():
    """No SLURM here: the batch script is only checked for shell syntax (`bash -n`)."""
    result = subprocess.run(["bash", "-n", str(REPO / "launch" / "slurm.sbatch")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
