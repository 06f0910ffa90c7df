"""``method.name: mblm`` — the branched student distilled from its languages' teachers (methods.md §B.3).

Before the first micro-batch (collectively, on every rank) the method builds or reuses the teacher-logit
cache: each supervised language's teacher is loaded, classifies that language's training rows from their
raw texts with its own tokenizer, and is released (:meth:`MultiTeacherCache.build`). The student's epochs
then read teacher logits by (language, uid); no teacher is resident.

Each micro-batch: one forward of the branched model (every branch on every row, and the mixture), the
own-branch logits distilled to the row's teacher, the mixture distilled to the same teacher with weight λ
(:func:`xdist.methods.mblm.loss.mblm_loss`). With ``mixture: dirichlet`` the weights are one seeded draw per
micro-batch, the same on every rank; the generator's state is the method's checkpoint state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from xdist.config import BranchesConfig, MBLMConfig
from xdist.errors import UserError
from xdist.methods.base import MethodContext, StepOutput
from xdist.methods.mblm.loss import DirichletDraws, mblm_loss
from xdist.methods.mblm.teachers import build_job_cache, check_training_languages
from xdist.methods.teacher_cache import MultiTeacherCache

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The batch fields the branched encoder is called with (labels and metadata stay out)."""


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's inputs of ``batch`` (:data:`ENCODER_INPUTS` present in it)."""
    return {name: batch[name] for name in ENCODER_INPUTS if name in batch}


class StaleCacheError(UserError, KeyError):
    """A training row the teacher-logit cache does not know (shards and ``data.train`` disagree)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MBLM:
    """Supervised KD per branch + the zero-shot-aware mixture KD, teachers from the logit cache."""

    name = "mblm"
    tasks = ("classification",)

    def __init__(self, context: MethodContext | None = None, *, cfg: MBLMConfig | None = None,
                 branches: BranchesConfig | None = None, build_cache: Callable[[], MultiTeacherCache] | None = None,
                 language_key: str = "groups", uid_key: str = "keys") -> None:
        """From the job's :class:`MethodContext` (the training loop: teachers from ``method.teachers``, texts
        from ``data.train``), or from ``cfg``, ``branches`` and a ``build_cache`` function directly (tests).

        ``language_key``/``uid_key``: the batch's per-row language and cache-key lists (the stream's
        ``groups`` and sample ``keys``)."""
        if context is not None:
            cfg, branches = context.method.mblm, context.cfg.model.branches
            check_training_languages(context)
            build_cache = partial(build_job_cache, context)
        if cfg is None or branches is None or build_cache is None:
            raise ValueError("MBLM needs a MethodContext, or cfg, branches and build_cache")
        self.cfg = cfg
        self.languages = list(branches.languages)
        self.mixture = branches.mixture
        self.build_cache = build_cache
        self.language_key, self.uid_key = language_key, uid_key
        self.draws = (DirichletDraws(len(self.languages), cfg.dirichlet_alpha, cfg.seed)
                      if branches.mixture == "dirichlet" else None)
        self.cache: MultiTeacherCache | None = None

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        if self.cache is None:
            self.cache = self.build_cache()

    def branch_index(self, languages: Sequence[str]) -> torch.Tensor:
        """Each row's branch; a training row in a language without a branch is an error naming it."""
        try:
            return torch.tensor([self.languages.index(lang) for lang in languages], dtype=torch.long)
        except ValueError:
            bad = next(lang for lang in languages if lang not in self.languages)
            raise ValueError(f"training row in language {bad!r}, which has no branch (model.branches.languages: "
                             f"{self.languages}); MBLM trains on its supervised languages only") from None

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        if self.cache is None:
            raise RuntimeError("MBLM.step before on_epoch_start: the teacher cache is not built")
        languages, uids = list(batch[self.language_key]), list(batch[self.uid_key])
        branch = self.branch_index(languages)
        inputs = model_inputs(batch)
        device = inputs["input_ids"].device
        weights = self.draws.draw().to(device) if self.draws is not None else None
        out = engine(**inputs, branch=branch.to(device), mixture_weights=weights)
        try:
            teacher = self.cache.logits(languages, uids, device)
        except KeyError as err:
            raise StaleCacheError(
                f"MBLM: a training row has no teacher logits ({err.args[0]}): the shards were prepared from other "
                "data than data.train reads now; re-run xdist prepare, or delete <train.output_dir>/teacher_cache"
            ) from None
        labels = batch.get("labels") if self.cfg.alpha_ce > 0 else None
        parts = mblm_loss(out.branch_logits.float(), out.mixture_logits.float(), branch.to(device), teacher,
                          labels.to(device) if labels is not None else None, temperature=self.cfg.temperature,
                          alpha_ce=self.cfg.alpha_ce, mixture_weight=self.cfg.mixture_weight)
        logs: dict[str, torch.Tensor | float] = {"loss/kd": parts.supervised_kd.detach(),
                                                 "loss/mixture_kd": parts.mixture_kd.detach()}
        if parts.ce is not None:
            logs["loss/ce"] = parts.ce.detach()
        if self.mixture != "uniform":
            mean = out.mixture_weights.detach().float().mean(0)  # the draw, or the learned gate's batch mean
            logs.update({f"mixture/{lang}": mean[b] for b, lang in enumerate(self.languages)})
        return StepOutput(loss=parts.loss, logs=logs)

    def state_dict(self) -> dict[str, Any]:
        return {"dirichlet": self.draws.state_dict()} if self.draws is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.draws is not None and "dirichlet" in state:
            self.draws.load_state_dict(state["dirichlet"])
