"""Model-level evaluation: eval sets → the task's features → distributed forward → the task's scores.

Every rank reads and featurises the evaluation sets through the task (deterministic, so no broadcast is
needed), runs the forward pass on its share of the rows, and the main rank gathers the logits, has the
task score them (QA: n-best decoding, EM/F1 per (question language, context language) cell) and writes
``metrics.json``, prediction files and heatmaps. Under ZeRO-3 every rank must take part in every forward
pass, so the shares are padded to equal length.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xdist.config import JobConfig
from xdist.distributed import DistEnv, all_gather_object
from xdist.errors import ConfigValueError, MissingPathError
from xdist.evaluation import EvalResult, figure_image, figure_of, write_report
from xdist.tasks import EvalData, Task, get_task

log = logging.getLogger("xdist.eval")


def _number(value: Any) -> str:
    """A summary value for the log: numbers to 2 decimals, labels (a worst language) as they are."""
    return "-" if value is None else value if isinstance(value, str) else f"{value:.2f}"


class Evaluator:
    """Evaluates a model of ``task`` on ``cfg.eval.sets``, on every rank of the job."""

    def __init__(self, cfg: JobConfig, tokenizer: Any, dist: DistEnv, task: Task | None = None):
        self.cfg = cfg
        self.dist = dist
        self.task = task or get_task(cfg.task)
        self.sets: list[EvalData] = []
        for source in cfg.eval.sets:
            data = self.task.eval_data(source, cfg, tokenizer)
            self.sets.append(data)
            log.info("eval set %s: %d examples, %d features", data.name, len(data.examples), data.rows)

    @torch.no_grad()
    def predict(self, forward: Callable[..., Any], data: EvalData) -> np.ndarray:
        """The task's logits ``[data.rows, ...]`` (float32) on the main rank (an empty array elsewhere)."""
        dist, batch_size = self.dist, self.cfg.eval.batch_size
        n = data.rows
        per_rank = math.ceil(n / dist.world_size)
        # Pad every rank's share to the same length by repeating its last index: ZeRO-3 needs every
        # rank in every forward; the padded rows are dropped when the main rank reassembles.
        mine = list(range(dist.rank, n, dist.world_size)) or [0]
        mine += [mine[-1]] * (per_rank - len(mine))
        parts = []
        batches = range(0, per_rank, batch_size)
        for lo in tqdm(batches, desc="eval", disable=None if dist.is_main else True, leave=False):
            idx = mine[lo : lo + batch_size]
            batch = {name: torch.from_numpy(rows[idx]).to(dist.device) for name, rows in data.inputs.items()}
            parts.append(self.task.logits(forward, batch).float().cpu().numpy())
        mine_logits = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        shares = all_gather_object((mine, mine_logits))
        if not dist.is_main:
            return np.zeros((0,), np.float32)
        shape = next((logits.shape[1:] for _, logits in shares if len(logits)), ())
        everything = np.zeros((n, *shape), np.float32)
        for indices, logits in shares:
            if len(logits):
                everything[indices] = logits
        return everything

    def run(self, model: Any, out_dir: Path, *, step: int = 0, monitor: Any = None) -> dict[str, Any] | None:
        """Evaluate every set; write reports under ``out_dir``; return the metrics dict on the main rank.

        ``model`` is anything callable like the task's ``transformers`` model (a DeepSpeed engine included).
        """
        results: dict[str, EvalResult] = {}
        for data in self.sets:
            logits = self.predict(model, data)
            if self.dist.is_main:
                results[data.name] = self.task.score(data, logits, self.cfg.eval)
        if not self.dist.is_main:
            return None
        files = write_report(results, out_dir, heatmap=self.cfg.eval.heatmap)
        for result in results.values():
            values = " | ".join(f"{label} {_number(result.summary.get(key))}"
                                for key, label in result.view.columns.items())
            log.info("eval %s step %d: %s | %d %ss", result.name, step, values, len(result.groups),
                     result.view.group_kind)
        if monitor is not None:
            for result in results.values():
                monitor.scalars(step, result.scalars(prefix="eval"))
                if self.cfg.eval.heatmap:
                    monitor.image(f"eval/{result.name}/{result.view.figure_tag}", figure_image(figure_of(result)),
                                  step)
            monitor.flush()
        return json.loads(files.metrics.read_text())


def evaluate_checkpoint(cfg: JobConfig, checkpoint: str, *, out_dir: str | None = None) -> dict[str, Any] | None:
    """``xdist eval``: load an exported Hugging Face checkpoint of ``cfg.task`` and evaluate it on ``cfg.eval.sets``.

    Runs on every rank of the job (each rank forwards a share of the features); the main rank writes
    the report to ``out_dir`` and returns the metrics. The default ``out_dir`` is ``eval/<checkpoint name>``
    beside the checkpoint (``runs/demo/eval/export`` for ``runs/demo/export``): next to the run's own
    evaluations, never inside the checkpoint, which stays a clean ``save_pretrained`` directory.
    """
    from xdist.data.tokenizer import load_tokenizer
    from xdist.distributed import setup_distributed
    from xdist.monitor import setup_logging

    if not cfg.eval.sets:
        raise ConfigValueError("config field 'eval.sets': nothing to evaluate; add at least one source")
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise MissingPathError(
            f"--checkpoint {checkpoint!r}: not an exported model directory (no config.json in it); point it at "
            "a save_pretrained directory such as <train.output_dir>/export"
        )
    dist = setup_distributed()
    setup_logging(dist.rank)
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    task = get_task(cfg.task)
    model = task.build_model(cfg.model, tokenizer=tokenizer, checkpoint=path).to(dist.device).eval()
    evaluator = Evaluator(cfg, tokenizer, dist, task)
    out = Path(out_dir) if out_dir else path.resolve().parent / "eval" / path.resolve().name
    metrics = evaluator.run(model, out)
    if dist.is_main and metrics:
        for name, summary in metrics.get("summary", {}).items():
            log.info("%s: %s", name, summary)
        log.info("report written to %s", out)
    return metrics
