"""xdist.engine and xdist.distributed: DeepSpeed config resolution (in-process) and real 2-rank engines.

The multi-process checks run once per session through ``tests/distributed/engine_worker.py`` (one
torchrun launch with many engines, plus one plain process without a launcher); the ranks write JSON and
the tests below assert on it. Budget on the 2-core machine: about a minute for the whole file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xdist.config import ConfigError, TrainConfig
from xdist.deepspeed_config import linear_schedule, resolve_deepspeed_config, teacher_inference_config, warmup_steps
from xdist.engine import param_groups

REPO = Path(__file__).resolve().parents[1]
DS_DIR = REPO / "configs" / "deepspeed"
WORKER = REPO / "tests" / "distributed" / "engine_worker.py"
SHIPPED = ["zero1", "zero2", "zero3", "zero3_offload"]


def _train(path, **kw) -> TrainConfig:
    return TrainConfig(deepspeed=str(path), **kw)


def _write(tmp_path: Path, config: dict | str, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return path


# --------------------------------------------------------------------------------------------------
# resolve_deepspeed_config
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_resolve_every_auto(name):
    train = _train(
        DS_DIR / f"{name}.json", precision="bf16", micro_batch_size=3, gradient_accumulation_steps=5, lr=2e-5,
        adam_betas=[0.8, 0.99], adam_eps=1e-7, weight_decay=0.05, max_grad_norm=0.5, warmup_ratio=0.1,
    )
    raw = json.loads((DS_DIR / f"{name}.json").read_text())
    assert raw["train_batch_size"] == "auto" and raw["optimizer"]["params"]["lr"] == "auto"
    ds = resolve_deepspeed_config(train, world_size=4, total_steps=100, device_type="cpu")
    assert "auto" not in json.dumps(ds)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 2e-5, "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.05, "torch_adam": True},
    }
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "scheduler" not in ds  # xdist's exact linear schedule is passed to DeepSpeed instead
    assert ds["zero_optimization"]["stage"] == {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}[name]
    offloaded = "offload_optimizer" in ds["zero_optimization"]
    assert offloaded == (name == "zero3_offload")
    # the file on disk is untouched
    assert json.loads((DS_DIR / f"{name}.json").read_text()) == raw


def test_resolved_config_is_accepted_by_deepspeed(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig

    for name in SHIPPED:
        ds = resolve_deepspeed_config(
            _train(DS_DIR / f"{name}.json", micro_batch_size=2, gradient_accumulation_steps=3),
            world_size=1, total_steps=10, device_type="cpu",
        )
        parsed = DeepSpeedConfig(ds)  # without a process group DeepSpeed assumes world size 1
        assert parsed.train_batch_size == 6 and parsed.gradient_accumulation_steps == 3
        assert parsed.zero_optimization_stage == ds["zero_optimization"]["stage"]


@pytest.mark.parametrize("name", ["zero3", "zero3_offload"])
def test_teacher_inference_config_keeps_the_partitioning_drops_the_optimizer(name):
    ds = resolve_deepspeed_config(
        _train(DS_DIR / f"{name}.json", precision="bf16", micro_batch_size=2, gradient_accumulation_steps=3,
               max_grad_norm=0.5), world_size=1, total_steps=10, device_type="cpu",
    )
    teacher = teacher_inference_config(ds)
    assert not {"optimizer", "scheduler", "gradient_clipping"} & set(teacher)
    assert "offload_optimizer" not in teacher["zero_optimization"]
    # Everything that decides the partition layout is the student's (offload_param included).
    student_zero = {k: v for k, v in ds["zero_optimization"].items() if k != "offload_optimizer"}
    assert teacher["zero_optimization"] == student_zero
    assert teacher["bf16"] == {"enabled": True} and teacher["train_batch_size"] == 6
    assert "offload_optimizer" in ds["zero_optimization"] or name == "zero3"  # the student's is untouched
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(teacher)
    assert parsed.zero_optimization_stage == 3 and parsed.optimizer_name is None and parsed.bfloat16_config.enabled


def test_teacher_inference_config_needs_zero3():
    ds = resolve_deepspeed_config(_train(DS_DIR / "zero2.json"), world_size=1, total_steps=10, device_type="cpu")
    with pytest.raises(ConfigError, match=r"method\.teacher_partition.*train\.deepspeed gives ZeRO stage 2"):
        teacher_inference_config(ds)


def test_absent_sections_are_added(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 2}})
    ds = resolve_deepspeed_config(_train(path, precision="bf16", lr=1e-4), world_size=2, total_steps=10,
                                  device_type="cpu")
    assert ds["train_batch_size"] == 8 * 1 * 2
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 1e-4
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["bf16"] == {"enabled": True}
    assert "fp16" not in ds


@pytest.mark.parametrize(
    ("patch", "key", "field"),
    [
        ({"gradient_accumulation_steps": 4}, "'gradient_accumulation_steps'", "train.gradient_accumulation_steps"),
        ({"train_micro_batch_size_per_gpu": 16}, "'train_micro_batch_size_per_gpu'", "train.micro_batch_size"),
        ({"train_batch_size": 32}, "'train_batch_size'", "world size 2"),
        ({"gradient_clipping": 0.3}, "'gradient_clipping'", "train.max_grad_norm"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, "'optimizer.params.lr'", "train.lr"),
        ({"optimizer": {"params": {"betas": [0.9, 0.95]}}}, "'optimizer.params.betas'", "train.adam_betas"),
        ({"optimizer": {"params": {"weight_decay": 0.1}}}, "'optimizer.params.weight_decay'", "train.weight_decay"),
        ({"bf16": {"enabled": True}}, "'bf16.enabled'", "train.precision"),
        ({"fp16": {"enabled": True}}, "'fp16.enabled'", "train.precision"),
    ],
)
def test_explicit_conflict_names_file_key_and_field(tmp_path, patch, key, field):
    path = _write(tmp_path, {"zero_optimization": {"stage": 1}, **patch})
    with pytest.raises(ConfigError) as err:
        resolve_deepspeed_config(_train(path), world_size=2, total_steps=10, device_type="cpu")
    message = str(err.value)
    assert str(path) in message and key in message and field in message


def test_explicit_values_that_agree_are_kept(tmp_path):
    path = _write(tmp_path, {
        "train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1, "optimizer": {"type": "AdamW", "params": {"lr": 0.00005, "eps": 1e-8}},
        "bf16": {"enabled": False},
    })
    ds = resolve_deepspeed_config(_train(path), world_size=2, total_steps=10, device_type="cpu")
    assert ds["gradient_clipping"] == 1 and ds["optimizer"]["params"]["lr"] == 0.00005


def test_fp16_refused_on_cpu_accepted_on_cuda():
    train = _train(DS_DIR / "zero2.json", precision="fp16")
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        resolve_deepspeed_config(train, world_size=1, total_steps=10, device_type="cpu")
    ds = resolve_deepspeed_config(train, world_size=1, total_steps=10, device_type="cuda")
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, '{\n  "zero_optimization": {"stage": 2},\n  "gradient_clipping": ,\n}\n')
    with pytest.raises(ConfigError) as err:
        resolve_deepspeed_config(_train(path), world_size=1, total_steps=10, device_type="cpu")
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="train.deepspeed.*nope.json.*does not exist"):
        resolve_deepspeed_config(_train(tmp_path / "nope.json"), world_size=1, total_steps=10, device_type="cpu")


def test_auto_that_xdist_does_not_own_is_refused(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}})
    with pytest.raises(ConfigError, match="'zero_optimization.reduce_bucket_size' is \"auto\""):
        resolve_deepspeed_config(_train(path), world_size=1, total_steps=10, device_type="cpu")


def test_other_optimizer_refused(tmp_path):
    path = _write(tmp_path, {"optimizer": {"type": "Lamb", "params": {"lr": "auto"}}})
    with pytest.raises(ConfigError, match="'optimizer.type' is 'Lamb'"):
        resolve_deepspeed_config(_train(path), world_size=1, total_steps=10, device_type="cpu")


def test_warmup_decay_block_is_filled_or_refused(tmp_path):
    block = {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": "auto", "warmup_num_steps": "auto",
                                                               "total_num_steps": "auto"}}}
    path = _write(tmp_path, block)
    ds = resolve_deepspeed_config(_train(path, lr=1e-4, warmup_ratio=0.1), world_size=1, total_steps=200,
                                  device_type="cpu")
    assert ds["scheduler"]["params"] == {"warmup_max_lr": 1e-4, "warmup_num_steps": 20, "total_num_steps": 200,
                                         "warmup_min_lr": 0.0, "warmup_type": "linear"}
    with pytest.raises(ConfigError, match="cannot run without warm-up"):
        resolve_deepspeed_config(_train(path), world_size=1, total_steps=200, device_type="cpu")


@pytest.mark.parametrize(("ratio", "total"), [(0.0, 7), (0.1, 50), (0.25, 9), (0.5, 3)])
def test_linear_schedule_matches_transformers(ratio, total):
    from transformers import get_linear_schedule_with_warmup

    train = _train(DS_DIR / "zero2.json", warmup_ratio=ratio)
    warmup = warmup_steps(train, total)
    assert warmup == round(ratio * total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_linear_schedule_with_warmup(optimizer, warmup, total)
    factor = linear_schedule(warmup, total)
    for k in range(total + 1):
        assert factor(k) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12), k
        optimizer.step()
        reference.step()
    assert factor(total) == 0.0


def test_param_groups_exclude_biases_and_layernorm_from_decay():
    from transformers import BertConfig, BertForQuestionAnswering

    model = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert all(n.endswith(".bias") or "LayerNorm" in n for n in exempt)
    assert all(n.endswith(".weight") and "LayerNorm" not in n for n in decayed)
    assert "bert.embeddings.LayerNorm.weight" in exempt and "qa_outputs.weight" in decayed


# --------------------------------------------------------------------------------------------------
# real engines: one 2-rank launch, one plain process
# --------------------------------------------------------------------------------------------------


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore::FutureWarning", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _run(cmd: list[str], out: Path, ranks: int) -> list[dict]:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400, cwd=REPO)
    results = [json.loads(p.read_text()) if (p := out / f"rank{r}.json").is_file() else {} for r in range(ranks)]
    if proc.returncode != 0 or not all(r.get("done") for r in results):
        pytest.fail(f"worker failed (rc {proc.returncode}); partial results {[sorted(r) for r in results]}\n"
                    f"stderr tail:\n{proc.stderr[-4000:]}")
    return results


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> list[dict]:
    """Every rank's results from one 2-rank launch (train x4, checkpoint x2, accumulation, offload)."""
    out = tmp_path_factory.mktemp("engine_suite")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), "suite", "--out", str(out), "--repo", str(REPO)]
    return _run(cmd, out, ranks=2)


COMBOS = ["z2_fp32", "z2_bf16", "z3_fp32", "z3_bf16"]


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS)
def test_training_lowers_loss(suite, combo):
    for rank, results in enumerate(suite):
        r = results[f"train_{combo}"]
        assert r["zero_stage"] == int(combo[1])
        assert r["module_dtype"] == ("torch.bfloat16" if combo.endswith("bf16") else "torch.float32")
        # ZeRO-3 really partitions every parameter; ZeRO-2 none
        assert r["partitioned_params"] == (r["n_params"] if combo.startswith("z3") else 0)
        assert r["eval_after"] < 0.5 * r["eval_before"], (rank, r["eval_before"], r["eval_after"])
        assert r["losses"][-1] < r["losses"][0] - 1.0
    assert suite[0][f"train_{combo}"]["grad_norms"] == suite[1][f"train_{combo}"]["grad_norms"]  # global norm


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS)
def test_lr_schedule_drives_the_optimizer(suite, combo):
    r = suite[0][f"train_{combo}"]
    factor = linear_schedule(4, 20)  # warmup_ratio 0.2 of 20 scheduled steps, peak 3e-3
    assert r["lrs"] == pytest.approx([3e-3 * factor(k) for k in range(15)], abs=1e-12)
    assert r["first_step_param_change"] == 0.0  # step 1 runs at lr 0: the schedule reaches the optimizer
    assert r["global_steps"] == 15
    assert all(n is not None and n > 0 for n in r["grad_norms"])


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS)
def test_teacher_snapshot(suite, combo):
    for results in suite:
        t = results[f"teacher_{combo}"]
        assert t["dtype"] == ("torch.bfloat16" if combo.endswith("bf16") else "torch.float32")
        assert not t["partitioned"] and not t["requires_grad"] and not t["training"]
        assert t["equal_at_copy"] == 0.0
        assert t["logits_diff_at_copy"] == 0.0 and not t["logits_requires_grad"]
        assert t["student_changed_after_steps"] > 1e-4  # the student moved ...
        assert t["teacher_changed_after_steps"] == 0.0  # ... the teacher did not
        assert not t["any_grad"]
        assert t["refreshed_diff"] == 0.0 and t["refreshed_in_place"]


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS)
def test_export_loads_with_plain_transformers(suite, combo):
    e = suite[0][f"export_{combo}"]
    assert suite[1][f"export_{combo}"] == {}  # only rank 0 wrote and checked
    assert "model.safetensors" in e["files"] and "config.json" in e["files"] and "tokenizer.json" in e["files"]
    assert not any(f.endswith(".bin") for f in e["files"])
    assert e["missing"] == [] and e["unexpected"] == [] and e["mismatched"] == []
    assert e["saved_dtypes"] == ["torch.float32"] and e["loaded_dtype"] == "torch.float32"
    assert e["tokenizer_vocab"] == 1000 and e["tokenizer_ids"] == [2, 6, 7, 3]
    # exported weights are DeepSpeed's fp32 masters; rounded to the compute dtype they are the engine's own
    assert e["rounded_diff"] == 0.0
    if combo.endswith("fp32"):
        assert e["logits_diff"] < 1e-5 and e["master_vs_module"] == 0.0
    else:
        assert e["master_vs_module"] > 0.0  # bf16 training: masters carry bits the bf16 weights lack
        assert e["logits_diff"] < 0.05 * e["logits_scale"]


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS)
def test_export_is_a_starting_checkpoint(suite, combo):
    # build_qa_model(checkpoint=export) on every rank, under the same ZeRO stage and precision
    for results in suite:
        r = results[f"reload_{combo}"]
        assert r["partitioned_params"] == (39 if combo.startswith("z3") else 0)
        assert r["weights_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["z2", "z3"])
def test_checkpoint_round_trip(suite, stage):
    for rank, results in enumerate(suite):
        c = results[f"checkpoint_{stage}"]
        assert c["tags"] == ["step1", "step2", "step3"]
        assert c["listing"] == ["latest", "step2", "step3", "zero_to_fp32.py", "zero_to_torch.py"]  # keep_last=2
        assert c["latest"] == "step3"
        assert c["client_state"] == {"step": 3, "data": {"epoch": 0, "seen": 12}}
        assert c["fresh_diff_before_load"] > 1e-3  # the fresh engine really started elsewhere
        assert c["loaded_diff"] == 0.0
        assert c["global_steps"] == 3 and c["loaded_lr"] == c["saved_lr"]
        assert c["reloss4"] == c["loss4"], rank
        assert c["params4_diff"] == 0.0  # optimizer and scheduler state came back too
        assert "no verified checkpoint in" in c["errors"]["empty_dir"]
        assert "'step1' not found" in c["errors"]["deleted_tag"]


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(suite):
    a = suite[0]["accumulation"]
    assert suite[1]["accumulation"] == a
    # GA=2 x micro 2 == GA=1 x micro 4 == plain torch on the 8-row global batch
    assert a["ga1_norm"] == pytest.approx(a["ref_mean"], rel=1e-6)
    assert a["ga2_norm"] == pytest.approx(a["ref_mean"], rel=1e-6)
    assert a["ga1_vs_ga2_params"] < 1e-6
    assert a["ga_vs_initial_params"] > 1e-4  # a real optimizer step happened
    # masked rows: normalize_summed_loss gives the exact global mean; per-micro-batch means would not
    assert a["masked_norm"] == pytest.approx(a["ref_masked"], rel=1e-6)
    assert abs(a["ref_naive"] - a["ref_masked"]) > 1e-3 * a["ref_masked"]


@pytest.mark.slow
def test_zero3_offload_trains_on_cpu(suite):
    for results in suite:
        o = results["offload"]
        assert o["offload_optimizer"] == "cpu"
        assert o["eval_after"] < 0.7 * o["eval_before"]


@pytest.mark.slow
def test_single_process_without_launcher(tmp_path):
    out = tmp_path / "single"
    (r,) = _run([sys.executable, str(WORKER), "single", "--out", str(out), "--repo", str(REPO)], out, ranks=1)
    assert all(v is None for v in r["env_before"].values())
    assert r["dist"] == {"rank": 0, "local_rank": 0, "world_size": 1, "is_main": True, "device": "cpu",
                         "same_again": True}
    assert r["backend"] == "gloo"
    assert r["losses"][-1] < r["losses"][0]
    assert r["gathered"] == [{"rank": 0}]

