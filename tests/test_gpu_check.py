"""The GPU check (kernels/bench/gpu_check.sh, python -m kernels.bench.gpu_check).

Its ``--dry-run`` drives every section on CPU with tiny shapes (Triton interpreter, DeepSpeed CPU, real
``xdist prepare``/``xdist train`` and Hugging Face Trainer + DeepSpeed subprocesses), so a person with a
GPU finds working plumbing. The targets table is checked on hand-made measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.bench import gpu_check
from kernels.bench.harness import bench_row

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_a_complete_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    env |= {"PYTHON": sys.executable, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "kernels/bench/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "report"),
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    [md] = (tmp_path / "report").glob("gpu_check_*_dry-run.md")
    text = md.read_text()
    raw = json.loads(md.with_suffix(".json").read_text())
    assert raw["errors"] == {} and set(raw["sections"]) == set(gpu_check.SECTIONS)
    for line in ("# GPU check (DRY RUN on CPU)", "- driver:", "- versions: python", "## Targets", "## Span KD",
                 "## Vocabulary KD", "## Training throughput", "| xdist |", "| hf_trainer_deepspeed |"):
        assert line in text, f"report lacks {line!r}:\n{text}"
    # pytest -m gpu ran (every GPU test skips on CPU), and all four kernel providers' rows are there.
    assert raw["sections"]["pytest"]["counts"].get("skipped", 0) >= 1
    span = raw["sections"]["span"]["rows"]
    assert {(r["provider"], r["mode"]) for r in span if r["metric"] == "time"} == {
        (p, m) for p in ("torch", "xdist") for m in ("forward", "full")}
    assert all(r["p50"] > 0 for r in span if r["metric"] == "time")
    train = raw["sections"]["train"]
    for run in train["runs"].values():
        assert run["samples_per_s"] > 0 and run["tokens_per_s"] > 0 and run["steps_timed"] >= 1
    assert train["ce_epoch_s"] > 0 and train["skd_epoch_s"] > 0
    measured = {t["name"]: t["measured"] for t in raw["targets"]}
    for name, value in measured.items():
        needs_gpu = any(w in name for w in ("compile", "launches", "memory", "MFU"))
        assert (value is None) == needs_gpu, f"{name}: {value!r} (dry run: CPU-only figures are filled)"


def _span_rows(provider, us, launches=None):
    extra = {"L": 384, "dtype": "bf16", "coef": "map"}
    rows = [bench_row(kernel="span_kd", provider=provider, mode="full", metric="time", unit="us", x_name="B",
                      x_value=8, p50=us, extra_config=extra)]
    if launches is not None:
        rows.append(bench_row(kernel="span_kd", provider=provider, mode="full", metric="launches", unit="count",
                              x_name="B", x_value=8, p50=launches, extra_config=extra))
    return rows


def test_targets_from_measurements():
    report = gpu_check.Report(dry_run=False)
    report.sections["span"] = {"rows": _span_rows("torch", 800.0) + _span_rows("compile", 150.0)
                               + _span_rows("xdist", 100.0, launches=3)}
    kd_extra = {"rows": 1024, "dtype": "bf16"}
    kd = [bench_row(kernel="kd", provider="xdist", mode="full", metric=m, unit="", x_name="V", x_value=32000,
                    p50=v, extra_config=kd_extra) for m, v in (("time", 50.0), ("pct_copy", 86.0),
                                                                ("memory", 4 * 1024 * 32000 + 1))]
    kd.append(bench_row(kernel="kd", provider="compile", mode="full", metric="time", unit="us", x_name="V",
                        x_value=32000, p50=60.0, extra_config=kd_extra))
    report.sections["kd"] = {"rows": kd}
    report.sections["train"] = {
        "runs": {"xdist": {"samples_per_s": 120.0, "mfu": 0.46}, "hf_trainer_deepspeed": {"samples_per_s": 100.0}},
        "peak_tflops": 989.4, "skd_epoch_s": 11.0, "ce_epoch_s": 10.0,
    }
    by_start = {t.name: (t.measured, t.met) for t in gpu_check.targets(report)}
    assert by_start["span KD fwd+bwd: speed-up over eager (worst B x L)"] == ("8x", True)
    assert by_start["span KD fwd+bwd: speed-up over torch.compile (worst B x L)"] == ("1.5x", True)
    assert by_start["span KD: kernel launches per fwd+bwd (most over B x L)"] == ("3", False)
    assert by_start["vocab KD fwd+bwd: % of measured copy bandwidth (worst rows x V)"] == ("86%", True)
    assert by_start["vocab KD fwd+bwd: speed-up over torch.compile (worst rows x V)"] == ("1.2x", False)
    assert by_start["vocab KD: peak extra memory / size of an fp32 [rows, V] (most)"] == ("1.00", False)
    assert by_start["training samples/s: xdist / HF Trainer + DeepSpeed"] == ("1.20x", True)
    assert by_start["training MFU (xdist)"] == ("46.0%", True)
    assert by_start["SKD epoch with teacher-logit cache / CE epoch (time)"] == ("1.10x", True)
    assert by_start["pytest -m gpu tests/kernels"] == (None, None) and len(by_start) == 10
