"""The task seam: everything that differs between task families (extractive QA, classification), as one object.

A **task** owns exactly what varies between families: reading a source's raw files into examples,
turning examples into the arrays written to shards, building the model (the only code that names an
``AutoModelFor*`` class), the logits of a batch, the hard-label loss, and scoring an evaluation set. The
stream (plan, resume), the engine, the training loop, the method protocol, the monitor and ``xdist
compare`` never look inside a task's examples or logits: they call the :class:`Task` methods, stack
whatever arrays the task wrote (:func:`xdist.data.stream.collate`) and read the task-agnostic
:class:`xdist.evaluation.result.EvalResult` it returns.

The job config selects the task by name (``task: qa | classification``, default ``qa``);
:func:`xdist.tasks.get_task` returns the registered instance.

How to add a task
-----------------
1. Write a class that satisfies :class:`Task` in ``xdist/tasks/<name>/`` (QA, :class:`xdist.tasks.qa.QATask`,
   is the worked example). Keep it stateless: configs come in as arguments, so one instance serves
   ``prepare``, ``train`` and ``eval``.
2. Register it in ``xdist/tasks/__init__.py`` (``_TASKS``: name → ``"module:Class"``, imported lazily) and
   add the name to ``JobConfig.task``'s ``Literal`` in ``xdist/config.py``.
3. Shards: :meth:`Task.shard_records` yields :class:`xdist.data.shards.ShardRecord` objects. Put every
   array the model or the loss needs into ``arrays`` (labels too); the batch the method receives holds
   exactly those names (plus ``keys`` and ``groups``). Every record of a set must have the same array
   names, dtypes and shapes, and an ``input_ids`` of shape ``[max_length]``.
4. Methods: give each method that can train the task the task's name in its ``tasks`` (``ce`` accepts any
   task: its loss is :meth:`Task.loss` of :meth:`Task.logits`).
5. Evaluation: :meth:`Task.eval_data` reads and featurises one ``eval.sets`` entry; the evaluator runs
   :meth:`Task.logits` over ``EvalData.inputs`` on all ranks and hands the gathered logits to
   :meth:`Task.score`, which returns an :class:`~xdist.evaluation.result.EvalResult` (summary scores,
   per-group scores, per-example scores for paired tests, optional heatmap axes).
6. Tests in ``tests/tasks/<name>/``: readers on real files, features, the model's logits and loss, scoring
   against hand-computed cases; one end-to-end ``xdist prepare`` + ``xdist train`` run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from xdist.data.sources import SkipReport

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from xdist.config import DataConfig, EvalConfig, JobConfig, ModelConfig, SourceConfig
    from xdist.data.shards import ShardRecord
    from xdist.evaluation.result import EvalResult


@dataclass
class SourceRead:
    """What :meth:`Task.read` returns for one source (``data.train[]`` or ``eval.sets[]`` entry)."""

    examples: list[Any]
    """The task's examples, in a deterministic order (file order, cell by cell, ...)."""

    skipped: SkipReport = field(default_factory=SkipReport)
    """Records skipped under ``data.bad_records: skip`` (empty under ``error``)."""

    notes: list[str] = field(default_factory=list)
    """Changes that kept records but altered them (e.g. duplicate ids made unique), one line each."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Further reports for the shard manifest, by kind (QA: ``{"sampling": <cross-lingual sampling report>}``);
    ``xdist prepare`` writes ``feature_stats[kind][source name]`` for each."""


class FeatureStats(Protocol):
    """Counts a task keeps while featurising (windows per example, truncations, ...), merged over sources."""

    def merge(self, other: Any) -> Any:
        """Add ``other``'s counts into this object; return it."""

    def summary(self) -> str:
        """One human-readable line for the log."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the shard manifest."""


@dataclass
class EvalData:
    """One evaluation set, read and featurised by :meth:`Task.eval_data`."""

    name: str
    """The set's name (``eval.sets[].name``): the key in ``metrics.json`` and the report's file names."""

    inputs: dict[str, np.ndarray]
    """Model inputs, one row per forward row (``[N, ...]``, integer arrays): what :meth:`Task.logits` gets,
    sliced into batches and converted to tensors on the rank's device."""

    examples: Sequence[Any]
    """The task's examples (what is scored)."""

    features: Sequence[Any]
    """The task's features, row ``i`` of ``inputs`` being ``features[i]`` (QA: several windows per example)."""

    @property
    def rows(self) -> int:
        """Number of forward rows."""
        return len(next(iter(self.inputs.values()))) if self.inputs else 0


@runtime_checkable
class Task(Protocol):
    """A task family. Implementations are stateless; every config they need comes in as an argument."""

    name: str
    """The registry name (``JobConfig.task``)."""

    model_inputs: tuple[str, ...]
    """Batch fields the model is called with (QA: ``input_ids``, ``attention_mask``, ``token_type_ids``);
    every other array of the batch (labels) stays out of the forward call."""

    # ---- data -------------------------------------------------------------------------------------

    def read(self, source: SourceConfig, data: DataConfig, *, epoch: int = 0) -> SourceRead:
        """Read one source into examples (``source.path`` resolved against ``data.root``).

        ``epoch`` selects per-epoch draws where the source re-draws every epoch (QA's cross-lingual
        sampling); otherwise it is ignored. Bad input raises :class:`xdist.data.sources.DataError` naming
        the file and record (or is counted in ``skipped`` under ``data.bad_records: skip``).
        """

    def new_feature_stats(self) -> FeatureStats:
        """An empty :class:`FeatureStats` for :meth:`shard_records` to fill."""

    def shard_records(
        self, examples: Iterable[Any], tokenizer: PreTrainedTokenizerFast, cfg: JobConfig, stats: Any,
        source: SourceConfig,
    ) -> Iterator[ShardRecord]:
        """Featurise ``source``'s ``examples`` lazily into shard records (arrays incl. labels, group, source,
        meta) as the job's config says (``cfg.features``; classification: ``cfg.model.head`` and its prompt).

        A generator: ``xdist prepare`` streams it into :func:`xdist.data.shards.write_shards`. Records of
        an invalid feature raise :class:`xdist.data.shards.ShardError` naming the example.
        """

    def eval_data(self, source: SourceConfig, cfg: JobConfig, tokenizer: PreTrainedTokenizerFast) -> EvalData:
        """Read and featurise one evaluation set (every rank does it: it is deterministic)."""

    # ---- model ------------------------------------------------------------------------------------

    def build_model(
        self,
        cfg: ModelConfig,
        *,
        tokenizer: PreTrainedTokenizerFast | None = None,
        checkpoint: str | Path | None = None,
        ds_config: dict | None = None,
    ) -> PreTrainedModel:
        """The task's ``transformers`` model: the only place an ``AutoModelFor*`` class is named.

        Without ``checkpoint``: random init from ``cfg.model_type``/``cfg.architecture`` (vocabulary size and
        pad id from ``tokenizer``, required then) or ``cfg.checkpoint``. With ``checkpoint`` (a
        ``save_pretrained`` directory: an export, a teacher snapshot): exactly those weights, whatever ``cfg``
        says about init. ``ds_config`` is the resolved DeepSpeed config; under ZeRO-3 the model is created
        already partitioned (:func:`xdist.models.zero3_construction`). Never touches the Hub.
        """

    def logits(self, model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
        """The logits of ``batch`` (QA: ``[B, 2, L]`` start/end; classification: ``[B, C]``).

        ``model`` is anything callable like the ``transformers`` model (an engine's ``forward``, a teacher);
        only :attr:`model_inputs` are passed, moved to ``device`` first when given (a teacher outside the
        engine; an engine's ``forward`` moves them itself). Differentiable: methods back-propagate through it.
        """

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Hard-label cross-entropy of ``logits`` against the batch's labels: a scalar, the mean over rows.

        QA: ``(CE(start) + CE(end)) / 2`` with gold positions clamped to the sequence, as the
        ``*ForQuestionAnswering`` heads compute it.
        """

    # ---- evaluation -------------------------------------------------------------------------------

    def score(self, data: EvalData, logits: np.ndarray, cfg: EvalConfig) -> EvalResult:
        """Score one evaluation set from its gathered logits (``[data.rows, ...]`` float32, row order of
        ``data.inputs``) into the task-agnostic result that the report, monitor and ``xdist compare`` read."""
