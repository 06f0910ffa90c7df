"""xdist.models (with the QA head) in one process: construction and its errors, export/reload, teacher snapshots.

The DeepSpeed-wrapped and ZeRO-3-partitioned cases run in tests/test_engine.py (real 2-rank engines).
"""

from __future__ import annotations

import json

import pytest
import torch

from xdist.config import ConfigError, ModelConfig
from xdist.models import model_config
from xdist.tasks.qa.model import build_qa_model
from xdist.weights import copy_weights_into, export_pretrained, frozen_copy

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 48}


def _batch(seed: int = 0, rows: int = 3, seq: int = 19) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[0, 13:] = 0  # one padded row
    return {"input_ids": torch.randint(5, 120, (rows, seq), generator=g), "attention_mask": mask}


def _tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_qa_model(ModelConfig(architecture=dict(TINY), **kw), vocab_size=120, pad_token_id=0)


def test_random_init_uses_model_type_architecture_and_tokenizer():
    model = _tiny(dropout=0.0)
    assert type(model).__name__ == "BertForQuestionAnswering"
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size, config.pad_token_id) == (32, 2, 120, 0)
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0
    out = model(**_batch())
    assert out.start_logits.shape == (3, 19) and out.end_logits.shape == (3, 19)


def test_xlm_roberta_model_type():
    spec = ModelConfig(model_type="xlm-roberta", architecture=dict(TINY, max_position_embeddings=64))
    model = build_qa_model(spec, vocab_size=120, pad_token_id=1)
    assert type(model).__name__ == "XLMRobertaForQuestionAnswering" and model.config.pad_token_id == 1


def test_unknown_architecture_key_is_named_with_valid_examples():
    spec = ModelConfig(architecture={"hidden_size": 32, "num_hiden_layers": 2})
    with pytest.raises(ConfigError) as err:
        model_config(spec, vocab_size=120, pad_token_id=0)
    message = str(err.value)
    assert "model.architecture.num_hiden_layers" in message and "BertConfig" in message
    assert "hidden_size" in message  # lists valid keys


def test_unknown_model_type_is_named():
    with pytest.raises(ConfigError, match="model.model_type.*'bertt'"):
        model_config(ModelConfig(model_type="bertt"), vocab_size=120, pad_token_id=0)


def test_vocab_smaller_than_tokenizer_is_refused():
    with pytest.raises(ConfigError, match="model.architecture.vocab_size.*100.*120"):
        model_config(ModelConfig(architecture={"vocab_size": 100}), vocab_size=120, pad_token_id=0)


def test_missing_checkpoint_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match=f"model.checkpoint.*{missing}.*does not exist"):
        build_qa_model(ModelConfig(checkpoint=str(missing)), vocab_size=120, pad_token_id=0)


def test_directory_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a save_pretrained checkpoint.*notes.txt"):
        build_qa_model(ModelConfig(checkpoint=str(tmp_path)), vocab_size=120, pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="no weights"):
        build_qa_model(ModelConfig(checkpoint=str(tmp_path)), vocab_size=120, pad_token_id=0)


def test_export_then_build_from_checkpoint_round_trips(tmp_path):
    model = _tiny(dropout=0.0)
    with torch.no_grad():  # move off the init so a re-init could not match by accident
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_pretrained(model, tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").is_file()
    loaded = build_qa_model(ModelConfig(checkpoint=str(tmp_path / "export"), dropout=0.0), vocab_size=120,
                            pad_token_id=0)
    reference = dict(model.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in loaded.named_parameters())
    model.eval(), loaded.eval()
    batch = _batch(1)
    assert torch.equal(model(**batch).start_logits, loaded(**batch).start_logits)
    # the checkpoint's vocabulary must cover the tokenizer's
    with pytest.raises(ConfigError, match="vocab_size 120, smaller than the tokenizer's 500"):
        build_qa_model(ModelConfig(checkpoint=str(tmp_path / "export")), vocab_size=500, pad_token_id=0)
    # architecture overrides only apply to random init: both set is an error, not a silent drop
    with pytest.raises(ConfigError, match="model.architecture.*random init only"):
        build_qa_model(ModelConfig(checkpoint=str(tmp_path / "export"), architecture={"hidden_size": 64}),
                       vocab_size=120, pad_token_id=0)


def test_frozen_copy_of_plain_module_is_independent():
    model = _tiny(dropout=0.1)
    model.train()
    teacher = frozen_copy(model)
    assert teacher is not model and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), model.parameters(), strict=True))
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(teacher.parameters(), model.parameters(), strict=True))
    # non-persistent buffers (position ids) were copied, not left as uninitialised memory
    for (name, b), (_, c) in zip(teacher.named_buffers(), model.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    batch = _batch(2)
    model.eval()
    assert torch.equal(teacher(**batch).end_logits, model(**batch).end_logits)
    with torch.no_grad():
        model.qa_outputs.weight.add_(1.0)
    assert not torch.equal(teacher.qa_outputs.weight, model.qa_outputs.weight)
    ptr = teacher.qa_outputs.weight.data_ptr()
    copy_weights_into(model, teacher)
    assert torch.equal(teacher.qa_outputs.weight, model.qa_outputs.weight)
    assert teacher.qa_outputs.weight.data_ptr() == ptr


def test_frozen_copy_keeps_bf16():
    model = _tiny().to(torch.bfloat16)
    teacher = frozen_copy(model)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), model.parameters(), strict=True))
