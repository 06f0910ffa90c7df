"""The QA task object: its loss is the ``*ForQuestionAnswering`` head's own, and the method/task check."""

from __future__ import annotations

import pytest
import torch

from xdist.config import ConfigError, ModelConfig
from xdist.methods import method_class
from xdist.tasks import get_task
from xdist.tasks.base import Task

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 48}


class _Vocab:
    """The two things build_model reads from a tokenizer."""

    pad_token_id = 0

    def __len__(self) -> int:
        return 120


def test_loss_equals_the_heads_own_loss_bit_for_bit():
    task = get_task("qa")
    assert isinstance(task, Task) and task.name == "qa"
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(architecture=dict(TINY), dropout=0.0), tokenizer=_Vocab()).eval()
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    g = torch.Generator().manual_seed(seed)
    rows, length = 5, 23
    batch = {"input_ids": torch.randint(1, 120, (rows, length), generator=g),
             "attention_mask": torch.ones(rows, length, dtype=torch.long),
             "token_type_ids": torch.zeros(rows, length, dtype=torch.long),
             # Positions past the end are clamped to L and ignored, as the head does; ties at CLS (0).
             "start_positions": torch.tensor([0, 3, 22, 40, 0]), "end_positions": torch.tensor([0, 5, 22, 41, 7]),
             "keys": ["k"] * rows, "groups": ["en-en"] * rows}
    logits = task.logits(model, batch)
    assert logits.shape == (rows, 2, length)
    own = model(**{k: batch[k] for k in task.model_inputs},
                start_positions=batch["start_positions"], end_positions=batch["end_positions"]).loss
    assert torch.equal(task.loss(logits, batch), own), f"seed {seed}"


def test_a_method_that_cannot_train_the_task_names_both_fields():
    assert method_class("ce", "qa").name == "ce" and method_class("ce", "classification").name == "ce"
    assert method_class("skd", "qa").name == "skd"
    with pytest.raises(ConfigError, match=r"'method.name' and 'task': method 'skd' supports task\(s\) \['qa'\], "
                                          r"not 'classification'"):
        method_class("skd", "classification")
    with pytest.raises(ConfigError, match="config field 'task': no task 'nope' is registered"):
        get_task("nope")
