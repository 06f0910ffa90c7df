"""MBLM's loss against a float64 reference written out here, for every option; the seeded Dirichlet draws."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest
import torch

from xdist.methods.mblm.loss import DirichletDraws, mblm_loss, own_branch_logits


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test, printed (shown when the test fails); replay with XDIST_TEST_SEED=<seed>."""
    value = int(os.environ.get("XDIST_TEST_SEED", secrets.randbits(31)))
    print(f"[seed] {request.node.nodeid}: replay with XDIST_TEST_SEED={value}")
    return value


def _reference(branch_logits, mixture_logits, branch, teacher, labels, temperature, alpha_ce, lam):
    """sum over rows, float64, no shared code with the implementation."""
    z = branch_logits.double()
    rows = z.shape[0]
    own = torch.stack([z[b, branch[b]] for b in range(rows)])
    p = torch.softmax(teacher.double() / temperature, -1)

    def kl(student):
        log_q = torch.log_softmax(student / temperature, -1)
        return (p * (p.log() - log_q)).sum(-1).mean() * temperature**2

    loss = kl(own) + lam * kl(mixture_logits.double())
    if alpha_ce:
        loss = loss + alpha_ce * -torch.log_softmax(own, -1)[torch.arange(rows), labels].mean()
    return loss


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("alpha_ce", [0.0, 0.7])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(5, 3, 3), (8, 2, 2), (1, 4, 7)])
def test_loss_and_gradients_match_a_float64_reference(temperature, alpha_ce, lam, shape, seed):
    rows, branches, classes = shape
    g = torch.Generator().manual_seed(seed)
    branch_logits = (3 * torch.randn(shape, generator=g)).requires_grad_()
    mixture_logits = (3 * torch.randn(rows, classes, generator=g)).requires_grad_()
    teacher = 3 * torch.randn(rows, classes, generator=g)
    teacher[0] = teacher[0, 0]  # a uniform teacher row (ties)
    branch = torch.randint(0, branches, (rows,), generator=g)
    labels = torch.randint(0, classes, (rows,), generator=g)
    parts = mblm_loss(branch_logits, mixture_logits, branch, teacher, labels, temperature=temperature,
                      alpha_ce=alpha_ce, mixture_weight=lam)
    parts.loss.backward()
    leaves = [branch_logits.detach().double().requires_grad_(), mixture_logits.detach().double().requires_grad_()]
    expected = _reference(*leaves, branch, teacher, labels, temperature, alpha_ce, lam)
    expected.backward()
    assert parts.loss.dtype == torch.float32
    torch.testing.assert_close(parts.loss.double(), expected.detach(), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(branch_logits.grad.double(), leaves[0].grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mixture_logits.grad.double(), leaves[1].grad, rtol=1e-5, atol=1e-7)
    # Rows reach only their own branch.
    for b in range(rows):
        others = [m for m in range(branches) if m != branch[b]]
        assert torch.count_nonzero(branch_logits.grad[b, others]) == 0
    if lam == 0:
        assert torch.count_nonzero(mixture_logits.grad) == 0
    # Logged parts: each KD term on its own, and the CE.
    expected_mix = _reference(branch_logits.detach(), mixture_logits.detach(), branch, teacher, labels,
                              temperature, 0.0, 1.0) - _reference(branch_logits.detach(), mixture_logits.detach(),
                                                                  branch, teacher, labels, temperature, 0.0, 0.0)
    torch.testing.assert_close(parts.mixture_kd.double(), expected_mix, rtol=1e-5, atol=1e-6)
    assert (parts.ce is None) == (alpha_ce == 0)


def test_training_rows_must_have_a_branch():
    logits = torch.zeros(3, 2, 3)
    with pytest.raises(ValueError, match="branch index -1: every training row must be in a supervised language"):
        own_branch_logits(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="branch index 2"):
        own_branch_logits(logits, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="mixture_weight and alpha_ce must be >= 0"):
        mblm_loss(logits, torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), torch.zeros(3, 3), mixture_weight=-1)


def test_dirichlet_draws_are_seeded_and_resume_exactly():
    draws = DirichletDraws(3, alpha=0.5, seed=7)
    first = [draws.draw() for _ in range(5)]
    state = draws.state_dict()
    later = [draws.draw() for _ in range(4)]
    resumed = DirichletDraws(3, alpha=0.5, seed=123)  # the seed is overridden by the saved state
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(later, [resumed.draw() for _ in range(4)], strict=True))
    again = DirichletDraws(3, alpha=0.5, seed=7)
    assert all(torch.equal(a, again.draw()) for a in first)  # same seed, same draws (every rank alike)
    assert not torch.equal(first[0], DirichletDraws(3, alpha=0.5, seed=8).draw())
    for w in first + later:
        assert w.shape == (3,) and w.dtype == torch.float32 and (w >= 0).all()
        assert abs(float(w.sum()) - 1) < 1e-6
    # The distribution: mean 1/M, variance (1/M)(1-1/M)/(M alpha + 1) for Dirichlet(alpha, ..., alpha).
    many = torch.stack([draws.draw() for _ in range(4000)]).double().numpy()
    assert np.allclose(many.mean(0), 1 / 3, atol=0.02)
    assert np.allclose(many.var(0), (1 / 3) * (2 / 3) / 2.5, rtol=0.1)
    with pytest.raises(ValueError, match="alpha > 0"):
        DirichletDraws(3, alpha=0.0, seed=0)
