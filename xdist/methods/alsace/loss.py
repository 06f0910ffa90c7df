"""ALSACE's cross-lingual consistency loss on a stacked pair batch (methods.md §C.5).

A micro-batch of B instance pairs is forwarded as one stacked batch of 2B rows (the first sides, then
the second sides: one forward, so ZeRO-3 gathers each parameter once), and its logits ``[2B, K]`` are
split into ``z_a = logits[:B]`` (first, higher-ranked language) and ``z_b = logits[B:]``. K is the number
of classes (class logits, the default) or the vocabulary (the full MLM distribution at the mask, V up to
250,002 for XLM-R).

``direction``:
* ``code`` (default) — the authors' ``get_KL_loss``: KL(P_b ‖ P_a) = Σ_c q_b (log q_b − log p_a), batchmean,
  **no detach** (both sides receive gradients: a two-way consistency regulariser).
  :func:`kernels.kd.kd_loss` with ``student=z_a``, ``teacher=z_b``, ``direction="forward"``,
  ``teacher_grad=True``.
* ``teacher_to_student`` — the paper's reading: KL(P_a.detach() ‖ P_b), the higher-ranked side is the
  teacher and gets no gradient (``student=z_b``, ``teacher=z_a``, ``teacher_grad=False``).

``divergence: jsd`` replaces the KL by the symmetric Jensen–Shannon divergence (beta 0.5; the authors'
commented-out variant), with the same detach rule. ``temperature`` T divides both logits; with
``t2_scaling`` the divergence is multiplied by T² (Hinton; irrelevant at the authors' T = 1).

Optional hard-label term: ``alpha_ce`` · mean CE over the rows that carry a label (``labels[r] !=
-100``; the method labels only the English rows that have a gold label, the zero-shot setting's only
labelled language). It is computed here rather than through ``kd_loss``'s ``labels``, because that CE
applies to the student argument only, while a labelled row may be on either side of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from kernels.kd import kd_loss

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PairLossOptions:
    """How the two sides of a pair are compared (module docstring)."""

    direction: Literal["code", "teacher_to_student"] = "code"
    divergence: Literal["kl", "jsd"] = "kl"
    temperature: float = 1.0
    t2_scaling: bool = True
    alpha_kl: float = 1.0
    alpha_ce: float = 0.0
    backend: Literal["auto", "triton", "torch"] = "auto"

    def __post_init__(self) -> None:
        if self.direction not in ("code", "teacher_to_student"):
            raise ValueError(f"direction must be 'code' or 'teacher_to_student', got {self.direction!r}")
        if self.divergence not in ("kl", "jsd"):
            raise ValueError(f"divergence must be 'kl' or 'jsd', got {self.divergence!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.alpha_kl < 0 or self.alpha_ce < 0:
            raise ValueError(f"alpha_kl and alpha_ce must be >= 0, got {self.alpha_kl} and {self.alpha_ce}")


@dataclass
class PairLoss:
    """Result of :func:`pair_loss`."""

    loss: torch.Tensor
    """Scalar to back-propagate: alpha_kl · c_T · batchmean(D) + alpha_ce · mean CE."""
    divergence_rows: torch.Tensor
    """[B] detached divergence per pair (without T² or weight)."""
    ce: torch.Tensor | None
    """Detached mean CE over the labelled rows (None without labels or with alpha_ce 0)."""

    def logs(self) -> dict[str, torch.Tensor]:
        """Detached scalars for the training log (stay on the device)."""
        logs = {"loss/kd": self.divergence_rows.mean()}
        if self.ce is not None:
            logs["loss/ce"] = self.ce
        return logs


def split_pairs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) halves of stacked pair logits ``[2B, K]``; ValueError for an odd row count."""
    if logits.dim() != 2 or logits.shape[0] % 2:
        raise ValueError(f"pair logits must be [2B, K] (first sides, then second sides), got {tuple(logits.shape)}")
    half = logits.shape[0] // 2
    return logits[:half], logits[half:]


def pair_loss(
    logits: torch.Tensor, options: PairLossOptions = PairLossOptions(), labels: torch.Tensor | None = None
) -> PairLoss:
    """The consistency loss of stacked pair logits ``[2B, K]`` (module docstring); ``labels`` [2B] with
    -100 on unlabelled rows enables the CE term (with ``alpha_ce > 0``)."""
    first, second = split_pairs(logits)
    if options.direction == "code":
        student, teacher, teacher_grad = first, second, True
    else:
        student, teacher, teacher_grad = second, first, False
    output = kd_loss(
        student, teacher,
        temperature=options.temperature, direction="jsd" if options.divergence == "jsd" else "forward", beta=0.5,
        t2_scaling=options.t2_scaling, alpha_kl=options.alpha_kl, teacher_grad=teacher_grad, backend=options.backend,
    )  # fmt: skip
    loss, ce = output.loss, None
    if labels is not None and options.alpha_ce > 0:
        if labels.shape != (logits.shape[0],):
            raise ValueError(
                f"pair labels must be [{logits.shape[0]}] (one per stacked row), got {tuple(labels.shape)}"
            )
        labels = labels.to(logits.device)
        compute = torch.promote_types(logits.dtype, torch.float32)  # fp32 for bf16/fp16, float64 stays
        rows = F.cross_entropy(logits.to(compute), labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
        n_labelled = (labels != IGNORE_INDEX).sum().clamp(min=1)
        ce_mean = rows.sum() / n_labelled  # 0 (not NaN) when no row of the micro-batch is labelled
        loss = loss + options.alpha_ce * ce_mean
        ce = ce_mean.detach()
    return PairLoss(loss=loss, divergence_rows=output.kl_rows, ce=ce)
