"""``xdist demo``: the README's main job in one command (the CLI runs the steps; this module decides them).

1. data: the training set (TyDi QA GoldP English) and the eval set (XQuAD) from the data directory
   (``$XDIST_DATA``, default ``~/.cache/xdist/data``), fetched there first when missing;
2. tokenizer: ``$XDIST_TOKENIZER``, else the local copy ``<data>/tokenizers/mbert-cased`` when there is
   one, else the Hub's ``bert-base-multilingual-cased``;
3. ``xdist prepare`` then ``xdist train --nproc 2`` (which evaluates at the end) on ``configs/demo.yaml``;
4. a summary: the scores, and where the metrics, heatmap, predictions, model and TensorBoard logs are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xdist.errors import MissingPathError

DEMO_SETS = ("tydiqa", "xquad")
"""Data sets the demo reads (names of :data:`xdist.data.fetch.REGISTRY`)."""

HUB_TOKENIZER = "bert-base-multilingual-cased"
LOCAL_TOKENIZER = "tokenizers/mbert-cased"


def demo_config(path: str | None) -> Path:
    """``path``, or the repository's ``configs/demo.yaml`` (beside the package), or ``./configs/demo.yaml``."""
    candidates = [Path(path)] if path else [Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                                            Path("configs/demo.yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingPathError(f"demo config {str(candidates[0])!r} does not exist; run xdist demo from the repository "
                           "checkout, or give the config: xdist demo path/to/demo.yaml")


def demo_tokenizer(data_dir: Path) -> str:
    """The tokenizer the demo uses (see module doc): an explicit choice, a local copy, or the Hub id."""
    if os.environ.get("XDIST_TOKENIZER"):
        return os.environ["XDIST_TOKENIZER"]
    local = data_dir / LOCAL_TOKENIZER
    return str(local) if (local / "tokenizer.json").is_file() else HUB_TOKENIZER


def summary(output_dir: Path, seconds: float) -> str:
    """The closing lines: scores and where every result is."""
    lines = [f"demo finished in {seconds / 60:.1f} min; results in {output_dir}/ ({disk_usage(output_dir)})"]
    metrics_path = output_dir / "eval" / "final" / "metrics.json"
    if metrics_path.is_file():
        for name, row in json.loads(metrics_path.read_text()).get("summary", {}).items():
            scores = ", ".join(f"{key} {value}" if isinstance(value, int) else f"{key} {value:.2f}"
                               for key, value in row.items() if isinstance(value, int | float))
            lines.append(f"  {name}: {scores}")
    final = output_dir / "eval" / "final"
    lines += [
        f"  metrics:      {metrics_path}",
        f"  heatmaps:     {final / 'heatmaps'}/",
        f"  predictions:  {final / 'predictions'}/",
        f"  model:        {output_dir / 'export'}/ (save_pretrained)",
        f"  loss per step: {output_dir / 'train_log.jsonl'}",
        f"  TensorBoard:  tensorboard --logdir {output_dir / 'tensorboard'}",
    ]
    return "\n".join(lines)


def disk_usage(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 2**20:.0f} MiB on disk"
