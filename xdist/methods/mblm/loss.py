"""MBLM's loss (methods.md §B.3, a reconstruction from the abstract) and its seeded Dirichlet mixture draws.

Per micro-batch of B rows, every row in a supervised language l (branch index l), teacher logits t
(teacher_l's, from the logit cache), the branched model's own-branch logits z_l and mixture logits z_mix::

    L = T^2 * mean_b KL(softmax(t/T) || softmax(z_l/T))          supervised KD, branch l only
      + alpha_ce * mean_b CE(z_l, y)                               optional hard labels (default 0)
      + lambda * T^2 * mean_b KL(softmax(t/T) || softmax(z_mix/T))  zero-shot-aware term (default lambda 1)

The mixture is the same example's representation through *every* branch, mixed (uniform, Dirichlet or
a learned gate; :mod:`xdist.branched`) and classified: branches j != l see language l "zero-shot",
and the mixture is what an unsupervised language is classified by at inference. Both KD terms go
through :func:`kernels.kd.kd_loss` (Triton on CUDA, the PyTorch reference elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels.kd import kd_loss


@dataclass(frozen=True)
class MBLMLossParts:
    """The loss and its detached parts (for logging)."""

    loss: torch.Tensor
    supervised_kd: torch.Tensor
    ce: torch.Tensor | None
    mixture_kd: torch.Tensor


def own_branch_logits(branch_logits: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """Row b's logits from branch ``branch[b]``: [B, M, C] -> [B, C] (gradient reaches that branch only)."""
    if branch.shape != branch_logits.shape[:1]:
        raise ValueError(f"branch must have shape ({branch_logits.shape[0]},), got {tuple(branch.shape)}")
    # Checked where it costs nothing (CPU tensors); on an accelerator it would be a host sync per step.
    if branch.device.type == "cpu" and bool(((branch < 0) | (branch >= branch_logits.shape[1])).any()):
        bad = int(branch[(branch < 0) | (branch >= branch_logits.shape[1])][0])
        raise ValueError(f"training row with branch index {bad}: every training row must be in a supervised "
                         f"language (0 .. {branch_logits.shape[1] - 1})")
    index = branch.view(-1, 1, 1).expand(-1, 1, branch_logits.shape[-1])
    return branch_logits.gather(1, index).squeeze(1)


def mblm_loss(
    branch_logits: torch.Tensor,
    mixture_logits: torch.Tensor,
    branch: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha_ce: float = 0.0,
    mixture_weight: float = 1.0,
) -> MBLMLossParts:
    """The MBLM loss of one micro-batch (module docstring). ``branch_logits`` [B, M, C], ``mixture_logits``
    [B, C], ``branch`` [B] (each row's supervised language), ``teacher_logits`` [B, C], ``labels`` [B]
    (needed when ``alpha_ce`` > 0)."""
    if mixture_weight < 0 or alpha_ce < 0:
        raise ValueError(f"mixture_weight and alpha_ce must be >= 0, got {mixture_weight} and {alpha_ce}")
    own = own_branch_logits(branch_logits, branch)
    teacher = teacher_logits.to(own.dtype) if teacher_logits.dtype != own.dtype else teacher_logits
    supervised = kd_loss(own, teacher, labels if alpha_ce > 0 else None, temperature=temperature,
                         alpha_ce=alpha_ce)
    mixed = kd_loss(mixture_logits, teacher.to(mixture_logits.dtype), temperature=temperature)
    loss = supervised.loss + mixture_weight * mixed.loss
    t2 = temperature**2
    ce = supervised.ce_rows.mean() if supervised.ce_rows is not None else None
    return MBLMLossParts(loss=loss, supervised_kd=t2 * supervised.kl_rows.mean(), ce=ce,
                         mixture_kd=t2 * mixed.kl_rows.mean())


class DirichletDraws:
    """Mixture weights ~ Dirichlet(alpha, ..., alpha) over M branches, one draw per micro-batch.

    A seeded numpy ``Generator`` (PCG64): seeded alike on every rank and called once per micro-batch on
    every rank, it gives every rank the same weights at the same step (a per-step draw across the global
    batch). Its state is plain integers (:meth:`state_dict`), saved in checkpoints, so a resumed run
    continues with exactly the draws the uninterrupted run would have made.
    """

    def __init__(self, branches: int, alpha: float, seed: int) -> None:
        if branches < 1 or not alpha > 0:
            raise ValueError(f"Dirichlet draws need >= 1 branch and alpha > 0, got {branches} and {alpha}")
        self.branches = branches
        self.alpha = float(alpha)
        self.generator = np.random.default_rng(seed)

    def draw(self) -> torch.Tensor:
        """The next weights [M] (float32, sum 1)."""
        return torch.from_numpy(self.generator.dirichlet([self.alpha] * self.branches)).float()

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.bit_generator.state = state["bit_generator"]
