"""The stage-0 model's class distributions on the unlabelled parallel set, for the teacher selection.

:func:`predict_probabilities` runs on every rank of a job (``xdist select-teachers``, distributed like
``xdist eval``): the L·N rows (every language's copy of every instance) are dealt round-robin to the
ranks, each rank forwards its share in batches (padded to equal length, since under ZeRO-3 every rank
must take part in every forward), and every rank receives the gathered ``[L, N, C]`` probabilities.
:func:`write_votes` keeps them (``votes.npz``: probabilities, languages, instance ids; no pickle), so the
selection report can be checked against the predictions it was computed from, and recomputed under
other options without the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xdist.distributed import DistEnv, all_gather_object
from xdist.methods.alsace.selection import Selection, SelectionError, selection_image, softmax, write_selection
from xdist.methods.alsace.selection import scalars as selection_scalars
from xdist.monitor import show_progress


@torch.no_grad()
def predict_probabilities(
    model: Any,
    logits: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    features: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    *,
    batch_size: int,
    dist: DistEnv,
) -> np.ndarray:
    """Class probabilities ``[L, N, C]`` (float64; languages in the order of ``features``) on every rank.

    ``features[lang][i]`` are the model-input arrays of instance i in language ``lang`` (the same instance
    order in every language); ``logits(model, batch)`` gives ``[rows, C]`` class logits of a batch of
    stacked arrays (tensors on ``dist.device``).
    """
    languages = list(features)
    n_inst = len(features[languages[0]])
    if any(len(features[lang]) != n_inst for lang in languages):
        counts = {lang: len(rows) for lang, rows in features.items()}
        raise SelectionError(f"the unlabelled set is not parallel: instances per language {counts}")
    rows = [(li, i) for li in range(len(languages)) for i in range(n_inst)]
    n = len(rows)
    per_rank = math.ceil(n / dist.world_size)
    mine = list(range(dist.rank, n, dist.world_size)) or [0]
    mine += [mine[-1]] * (per_rank - len(mine))  # padded rows are dropped when reassembling
    chunks = []
    bar = tqdm(range(0, per_rank, batch_size), desc="select-teachers", disable=not show_progress(dist.is_main),
               leave=False)
    for lo in bar:
        chosen = [rows[k] for k in mine[lo : lo + batch_size]]
        arrays = [features[languages[li]][i] for li, i in chosen]
        batch = {name: torch.from_numpy(np.stack([a[name] for a in arrays])).to(dist.device) for name in arrays[0]}
        chunks.append(logits(model, batch).double().cpu().numpy())
    shares = all_gather_object((mine, np.concatenate(chunks)))
    n_cls = shares[0][1].shape[-1]
    gathered = np.zeros((n, n_cls), dtype=np.float64)
    for indices, values in shares:
        gathered[indices] = values
    return softmax(gathered.reshape(len(languages), n_inst, n_cls))


def write_votes(path: str | os.PathLike, probs: np.ndarray, languages: Sequence[str], instances: Sequence[str]) -> Path:
    """``votes.npz``: ``probabilities`` [L, N, C] float64, ``languages`` [L], ``instances`` [N] (strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probabilities=probs, languages=np.array(list(languages)), instances=np.array(list(instances)))
    return path


def read_votes(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """(probabilities, languages, instances) of a :func:`write_votes` file (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return data["probabilities"], data["languages"].tolist(), data["instances"].tolist()


def write_selection_outputs(
    selection: Selection,
    probs: np.ndarray | None,
    instances: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    monitor: Any = None,
) -> dict[str, Path]:
    """``selection.json``, ``selection.png``, ``votes.npz`` under ``out_dir``, and the TensorBoard scalars
    (``select/R/<l>``, ``select/S/<l>``, ``select/xi``...) and chart image through ``monitor``."""
    files = write_selection(selection, out_dir)
    if probs is not None:
        files["votes"] = write_votes(Path(out_dir) / "votes.npz", probs, selection.languages, instances)
    if monitor is not None and selection.vote is not None:
        monitor.scalars(0, selection_scalars(selection))
        monitor.image("select/S", selection_image(selection), 0)
        monitor.flush()
    return files
