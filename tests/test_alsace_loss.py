"""ALSACE's pair consistency loss against a float64 reference written from the formulas (methods.md §C.5)."""

from __future__ import annotations

import os
import secrets

import pytest
import torch

from xdist.methods.alsace.loss import PairLossOptions, pair_loss, split_pairs


@pytest.fixture
def gen(request):
    """A torch generator with a fresh seed per test, printed for replay with XDIST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("XDIST_TEST_SEED", secrets.randbits(31)))
    print(f"[seed] {request.node.nodeid}: replay with XDIST_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


def reference(logits, options: PairLossOptions, labels=None):
    """float64, straight from the formulas: a = first half, b = second half of the stacked rows."""
    z = logits.double()
    a, b = z[: len(z) // 2], z[len(z) // 2 :]
    if options.direction == "teacher_to_student":
        a = a.detach()  # the higher-ranked side is the teacher: no gradient
    temperature = options.temperature
    log_pa = torch.log_softmax(a / temperature, -1)
    log_pb = torch.log_softmax(b / temperature, -1)
    if options.divergence == "kl":
        if options.direction == "code":  # KL(P_b || P_a)
            rows = (log_pb.exp() * (log_pb - log_pa)).sum(-1)
        else:  # KL(P_a || P_b)
            rows = (log_pa.exp() * (log_pa - log_pb)).sum(-1)
    else:
        log_m = torch.log(0.5 * log_pa.exp() + 0.5 * log_pb.exp())
        rows = 0.5 * (log_pa.exp() * (log_pa - log_m)).sum(-1) + 0.5 * (log_pb.exp() * (log_pb - log_m)).sum(-1)
    scale = temperature**2 if options.t2_scaling else 1.0
    loss = options.alpha_kl * scale * rows.mean()
    if labels is not None and options.alpha_ce > 0:
        labelled = labels != -100
        if labelled.any():
            ce = -torch.log_softmax(z, -1)[labelled].gather(1, labels[labelled, None].long()).mean()
            loss = loss + options.alpha_ce * ce
    return loss


OPTIONS = [
    PairLossOptions(),
    PairLossOptions(direction="teacher_to_student"),
    PairLossOptions(temperature=2.5),
    PairLossOptions(temperature=2.5, t2_scaling=False, direction="teacher_to_student"),
    PairLossOptions(divergence="jsd"),
    PairLossOptions(divergence="jsd", direction="teacher_to_student", temperature=0.7),
    PairLossOptions(alpha_ce=0.3, alpha_kl=0.5),
    PairLossOptions(alpha_ce=1.0, direction="teacher_to_student", temperature=2.0),
]


def option_id(o: PairLossOptions) -> str:
    return f"{o.direction}-{o.divergence}-T{o.temperature}-ce{o.alpha_ce}"


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("width", [3, 1031])
def test_loss_and_gradients_match_float64_reference(gen, options, dtype, width):
    pairs = 7
    logits = (torch.randn(2 * pairs, width, generator=gen, dtype=torch.float64) * 3).to(dtype)
    logits[1, :] = logits[pairs + 1, :]  # one pair that already agrees
    labels = torch.full((2 * pairs,), -100)
    labels[[0, 3, pairs + 2]] = torch.randint(0, width, (3,), generator=gen)
    mine = logits.clone().requires_grad_()
    out = pair_loss(mine, options, labels)
    out.loss.backward()
    ref_input = logits.double().clone().requires_grad_()
    ref = reference(ref_input, options, labels)
    ref.backward()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), ref.detach(), **tol)
    torch.testing.assert_close(mine.grad.double(), ref_input.grad, **tol)
    first_grad, second_grad = split_pairs(mine.grad)
    assert second_grad.abs().sum() > 0
    if options.direction == "code":
        assert first_grad.abs().sum() > 0  # both languages learn from each other (the authors' code)
    elif options.alpha_ce == 0:
        assert torch.equal(first_grad, torch.zeros_like(first_grad))  # the teacher side is detached
    assert out.divergence_rows.shape == (pairs,) and out.divergence_rows[1].abs() < 1e-6
    assert (out.ce is not None) == (options.alpha_ce > 0)


def test_default_is_the_authors_kl_second_given_first(gen):
    # The authors' get_KLDivLoss(batchmean, log_target=True)(log P_a, log P_b) = KL(P_b || P_a).
    logits = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(logits, -1)
    authors = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)(log_p[:5], log_p[5:])
    torch.testing.assert_close(pair_loss(logits).loss, authors, rtol=1e-13, atol=0)


def test_vocabulary_scale_mlm_distribution(gen):
    # The full MLM distribution at the mask (XLM-R's vocabulary), default options.
    vocab = 250_002
    logits = torch.randn(4, vocab, generator=gen, dtype=torch.float64) * 2
    ref_input = logits.clone().requires_grad_()
    ref = reference(ref_input, PairLossOptions())
    ref.backward()
    for dtype in (torch.float64, torch.float32):
        mine = logits.to(dtype).detach().clone().requires_grad_()
        out = pair_loss(mine)
        out.loss.backward()
        if dtype == torch.float64:
            torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-12, atol=0)
            torch.testing.assert_close(mine.grad, ref_input.grad, rtol=1e-10, atol=1e-16)
            continue
        torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=2e-5, atol=1e-6)
        # fp32 error of a gradient element is ~ eps * |log p| times the probabilities in it (the
        # element itself can cancel to ~0), so the bound is set by the size of its terms per element.
        p = torch.softmax(logits, -1)
        terms = (p[:2] + p[2:]).repeat(2, 1) / 2
        error = (mine.grad.double() - ref_input.grad).abs()
        assert (error <= 1e-4 * terms + 1e-12).all(), (error / (terms + 1e-30)).max()


def test_no_labelled_row_adds_nothing_and_bad_shapes_are_refused(gen):
    logits = torch.randn(6, 3, generator=gen)
    unlabelled = torch.full((6,), -100)
    with_ce = pair_loss(logits, PairLossOptions(alpha_ce=1.0), unlabelled)
    assert torch.equal(with_ce.loss, pair_loss(logits).loss) and with_ce.ce == 0
    with pytest.raises(ValueError, match="\\[2B, K\\]"):
        pair_loss(torch.randn(5, 3))
    with pytest.raises(ValueError, match="pair labels must be \\[6\\]"):
        pair_loss(logits, PairLossOptions(alpha_ce=1.0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="direction"):
        PairLossOptions(direction="both")
