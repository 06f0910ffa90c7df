"""Model-level evaluation: eval sets → features → distributed forward → decode → EM/F1 per cell.

Every rank reads and featurises the evaluation sets (deterministic, so no broadcast is needed), runs
the forward pass on its share of the features, and the main rank gathers the logits, decodes answers,
scores the (question language, context language) cells and writes ``metrics.json``, per-cell
prediction files and the G-XLT heatmap. Under ZeRO-3 every rank must take part in every forward
pass, so the shares are padded to equal length.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xdist.config import JobConfig
from xdist.data.examples import QAExample, QAFeature
from xdist.data.features import featurize
from xdist.data.readers import read_source
from xdist.distributed import DistEnv, all_gather_object
from xdist.errors import ConfigValueError, MissingPathError
from xdist.evaluation import EvalResult, evaluate_qa, heatmap_image, write_report
from xdist.evaluation.normalize import normalizer_for
from xdist.methods.base import MODEL_INPUTS

log = logging.getLogger("xdist.eval")


@dataclass
class EvalSet:
    """One evaluation source, read and featurised."""

    name: str
    examples: list[QAExample]
    features: list[QAFeature]
    scoring: str = "squad"
    """Answer normalisation of the scores (``eval.sets[].metric``, or the format's default)."""


def _feature_tensors(features: list[QAFeature], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor([getattr(f, name) for f in features], dtype=torch.long, device=device)
        for name in MODEL_INPUTS
    }


class QAEvaluator:
    """Evaluates a QA model on ``cfg.eval.sets``, on every rank of the job."""

    def __init__(self, cfg: JobConfig, tokenizer: Any, dist: DistEnv):
        self.cfg = cfg
        self.dist = dist
        self.sets: list[EvalSet] = []
        for index, source in enumerate(cfg.eval.sets):
            read = read_source(source, cfg.data)
            for language in sorted({e.context_lang for e in read.examples}):
                try:  # a scoring rule that cannot apply is a config error now, not after training
                    normalizer_for(language, source.scoring)
                except ValueError as err:
                    raise ConfigValueError(f"config field 'eval.sets[{index}].metric' (set {source.name!r}): {err}; "
                                           "use metric: squad for this set") from None
            if read.skipped.total:
                log.warning("eval set %s: %s", source.name, read.skipped.summary())
            featurized = featurize(read.examples, tokenizer, cfg.features)
            self.sets.append(EvalSet(source.name, read.examples, featurized.features, source.scoring))
            log.info(
                "eval set %s: %d examples, %d features, %d cells",
                source.name, len(read.examples), len(featurized.features),
                len({e.cell for e in read.examples}),
            )

    @torch.no_grad()
    def predict(self, forward: Callable[..., Any], features: list[QAFeature]) -> tuple[np.ndarray, np.ndarray]:
        """Start/end logits [n_features, L] on the main rank (empty arrays elsewhere)."""
        dist, batch_size = self.dist, self.cfg.eval.batch_size
        n = len(features)
        per_rank = math.ceil(n / dist.world_size)
        # Pad every rank's share to the same length by repeating its last index: ZeRO-3 needs every
        # rank in every forward; the padded rows are dropped when the main rank reassembles.
        mine = list(range(dist.rank, n, dist.world_size)) or [0]
        mine += [mine[-1]] * (per_rank - len(mine))
        starts, ends = [], []
        batches = range(0, per_rank, batch_size)
        for lo in tqdm(batches, desc="eval", disable=None if dist.is_main else True, leave=False):
            idx = mine[lo : lo + batch_size]
            outputs = forward(**_feature_tensors([features[i] for i in idx], dist.device))
            starts.append(outputs.start_logits.float().cpu().numpy())
            ends.append(outputs.end_logits.float().cpu().numpy())
        length = len(features[0].input_ids) if features else 0
        start = np.concatenate(starts) if starts else np.zeros((0, length), np.float32)
        end = np.concatenate(ends) if ends else np.zeros((0, length), np.float32)
        shares = all_gather_object((mine, start, end))
        if not dist.is_main:
            return np.zeros((0, length), np.float32), np.zeros((0, length), np.float32)
        all_start = np.zeros((n, length), np.float32)
        all_end = np.zeros((n, length), np.float32)
        for indices, s, e in shares:
            all_start[indices] = s
            all_end[indices] = e
        return all_start, all_end

    def run(self, model: Any, out_dir: Path, *, step: int = 0, monitor: Any = None) -> dict[str, Any] | None:
        """Evaluate every set; write reports under ``out_dir``; return the metrics dict on the main rank.

        ``model`` is anything callable like a ``transformers`` QA model (a DeepSpeed engine included).
        """
        results: dict[str, EvalResult] = {}
        for eval_set in self.sets:
            start, end = self.predict(model, eval_set.features)
            if self.dist.is_main:
                results[eval_set.name] = evaluate_qa(
                    eval_set.examples, eval_set.features, start, end, name=eval_set.name,
                    n_best=self.cfg.eval.n_best, max_answer_length=self.cfg.eval.max_answer_length,
                    scheme=eval_set.scoring,
                )
        if not self.dist.is_main:
            return None
        files = write_report(results, out_dir, heatmap=self.cfg.eval.heatmap)
        for result in results.values():
            xlt = f"{result.xlt.f1:.2f}" if result.xlt else "-"
            log.info("eval %s step %d: G-XLT F1 %.2f EM %.2f | XLT F1 %s | %d cells", result.name, step,
                     result.g_xlt.f1, result.g_xlt.exact_match, xlt, len(result.cells))
        if monitor is not None:
            for result in results.values():
                monitor.scalars(step, result.scalars(prefix="eval"))
                if self.cfg.eval.heatmap:
                    monitor.image(f"eval/{result.name}/g_xlt_heatmap", heatmap_image(result), step)
            monitor.flush()
        return json.loads(files.metrics.read_text())


def evaluate_checkpoint(cfg: JobConfig, checkpoint: str, *, out_dir: str | None = None) -> dict[str, Any] | None:
    """``xdist eval``: load an exported Hugging Face QA checkpoint and evaluate it on ``cfg.eval.sets``.

    Runs on every rank of the job (each rank forwards a share of the features); the main rank writes
    the report to ``out_dir`` and returns the metrics. The default ``out_dir`` is ``eval/<checkpoint name>``
    beside the checkpoint (``runs/demo/eval/export`` for ``runs/demo/export``): next to the run's own
    evaluations, never inside the checkpoint, which stays a clean ``save_pretrained`` directory.
    """
    from transformers import AutoModelForQuestionAnswering

    from xdist.data.features import load_tokenizer
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
    model = AutoModelForQuestionAnswering.from_pretrained(path, local_files_only=True).to(dist.device).eval()
    evaluator = QAEvaluator(cfg, tokenizer, dist)
    out = Path(out_dir) if out_dir else path.resolve().parent / "eval" / path.resolve().name
    metrics = evaluator.run(model, out)
    if dist.is_main and metrics:
        for name, summary in metrics.get("summary", {}).items():
            log.info("%s: %s", name, summary)
        log.info("report written to %s", out)
    return metrics
