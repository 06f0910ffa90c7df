"""Tests of kernels/span_kd.py.

The Triton kernel (under TRITON_INTERPRET=1 on CPU, natively on CUDA) is checked against the
PyTorch reference evaluated in float64 on the same input values; the reference itself is checked by
gradcheck and against literal re-implementations of the authors' ranking code (methods.md §A.5).

Tolerances (fp32 arithmetic in the kernel against an fp64 oracle):
- loss / per-row values: rtol 2e-5, atol 2e-6 (× T² for T²-scaled KL). The kernel sums <= 4099
  fp32 terms per row with online rescaling; KL is a difference of O(|log p|) terms, so its absolute
  error is ~eps·|log p|·T² even when KL is tiny (observed: 1.5e-7 relative to the largest term).
- gradients: atol ``GRAD_ULPS`` · eps32 · (size of the terms dS is made of, see ``grad_atol``) + rtol
  1e-4 for fp32 storage. The terms, not dS: where teacher ≈ student, q − p is far smaller than q and
  p, and a bound relative to max|dS| failed about one run in 20 on 1–2 ulps of q. For fp16/bf16 *inputs* the
  loss is computed from the exact upcast values, so it keeps the fp32 tolerance; only dS is rounded
  at the store: + rtol 2^-7 for bf16 (one ulp: the GPU rounds to nearest, but the triton 3.7
  interpreter *truncates* fp32 -> bf16 in ``cast_impl``), 2^-10 for fp16 (half an ulp, numpy
  rounds to nearest) and + atol 6e-8 for fp16 (its subnormal spacing 2^-24).
"""

import dataclasses
import itertools
import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from kernels import span_kd as span_kd_module
from kernels.span_kd import (
    SpanKDLoss,
    SpanKDOptions,
    rank_scores,
    span_kd_loss,
    span_kd_reference,
    stable_rank_order,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DIRECTIONS = ("forward", "reverse", "symmetric")
COEFS = ("constant", "map", "ap", "mrr")
SCOPES = ("batch", "example")

VALUE_TOL = dict(rtol=2e-5, atol=2e-6)
GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2.0**-7 + 1e-4, torch.float16: 2.0**-10 + 1e-4}
GRAD_ATOL_FLOOR = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 6e-8}
GRAD_ULPS = 16  # observed <= 2.7 over 4,320 random cases of the option matrix
EPS32 = torch.finfo(torch.float32).eps


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def make_case(gen, B, L, *, dtype=torch.float32, scale=3.0, validity="lengths", close=False):
    """Random student/teacher [B, 2, L], gold [B, 2] at valid positions, and lengths or a mask."""
    s = torch.randn(B, 2, L, generator=gen) * scale
    t = s + 0.3 * torch.randn(B, 2, L, generator=gen) if close else torch.randn(B, 2, L, generator=gen) * scale
    lengths = mask = None
    valid = torch.ones(B, L, dtype=torch.bool)
    if validity == "lengths":
        lengths = torch.randint(1, L + 1, (B,), generator=gen)
        valid = torch.arange(L)[None, :] < lengths[:, None]
    elif validity == "mask":
        valid = torch.rand(B, L, generator=gen) < 0.7
        valid[torch.arange(B), torch.randint(0, L, (B,), generator=gen)] = True  # >= 1 valid per row
        mask = valid.clone()
    gold = torch.stack([torch.multinomial(valid.float(), 2, replacement=True, generator=gen)[:, h]
                        for h in range(2)], dim=1)
    move = lambda x: None if x is None else x.to(DEVICE)
    return move(s.to(dtype)), move(t.to(dtype)), move(gold), move(lengths), move(mask)


def run_triton(s, t, gold, grad_scale=1.0, **kw):
    """Triton path: outputs and dS (after (loss * grad_scale).backward())."""
    s = s.detach().clone().requires_grad_(True)
    out = span_kd_loss(s, t, gold, backend="triton", **kw)
    (out.loss * grad_scale if grad_scale != 1.0 else out.loss).backward()
    return out, s.grad


def run_reference64(s, t, gold, grad_scale=1.0, **kw):
    s64 = s.detach().double().requires_grad_(True)
    out = span_kd_reference(s64, t.double(), gold, **kw)
    (out.loss * grad_scale).backward()
    return out, s64.grad


def grad_atol(s, t, kw, grad_scale=1.0) -> float:
    """Absolute fp32 error allowed in dS, from the size of the terms it is made of.

    dS = ce_w (softmax(s) − onehot(g)) + kl_w dKL/da with ce_w = alpha_ce/N and kl_w <= alpha_kl F/(T N)
    (rank scores are <= 1). Forward KL: dKL/da = q − p, probabilities with a few ulps of error each, so
    the error is ~eps · kl_w however small q − p is. Reverse KL: q (log q − log p − KL) with fp32
    log-probabilities as large as max|logit|/T, so ~eps · kl_w · (1 + max|logit|/T).
    """
    opts = SpanKDOptions(**{f.name: kw[f.name] for f in dataclasses.fields(SpanKDOptions) if f.name in kw})
    logit_scale = max(s.abs().max().item(), t.abs().max().item()) / opts.temperature
    kl_terms = (opts.direction != "reverse") + (opts.direction != "forward") * (1 + logit_scale)
    weight = opts.alpha_kl * opts.t2_factor / opts.temperature * kl_terms + opts.alpha_ce
    return GRAD_ULPS * EPS32 * abs(grad_scale) * weight / (2 * s.shape[0])


def assert_outputs_close(out, ref, grad, ref_grad, grad_atol, dtype=torch.float32, kl_factor=1.0):
    """grad_atol: from :func:`grad_atol`. kl_factor: T² when the KL is scaled by it. KL is a difference
    of O(|log p|) terms, so its absolute fp32 error scales with that factor however small KL itself is."""
    kl_tol = dict(rtol=VALUE_TOL["rtol"], atol=VALUE_TOL["atol"] * max(1.0, kl_factor))
    got_loss, want_loss = out.loss.double().cpu(), ref.loss.cpu()
    torch.testing.assert_close(got_loss, want_loss, **kl_tol, msg=lambda m: f"loss: {m}")
    torch.testing.assert_close(out.kl_rows.double().cpu(), ref.kl_rows.cpu(), **kl_tol)
    torch.testing.assert_close(out.coef.double().cpu(), ref.coef.cpu(), **VALUE_TOL)
    assert (out.ce_rows is None) == (ref.ce_rows is None)
    if ref.ce_rows is not None:
        torch.testing.assert_close(out.ce_rows.double().cpu(), ref.ce_rows.cpu(), **VALUE_TOL)
    assert (out.coef_rows is None) == (ref.coef_rows is None)
    if ref.coef_rows is not None:
        torch.testing.assert_close(out.coef_rows.double().cpu(), ref.coef_rows.cpu(), rtol=1e-6, atol=1e-7)
    assert grad.dtype == dtype
    torch.testing.assert_close(
        grad.double().cpu(), ref_grad.cpu(), rtol=GRAD_RTOL[dtype],
        atol=grad_atol + GRAD_ATOL_FLOOR[dtype] + 1e-12, msg=lambda m: f"dS: {m}",
    )


# ------------------------------------------------------------------------------------------------
# Triton kernel vs the float64 reference
# ------------------------------------------------------------------------------------------------

ALL_OPTIONS = list(itertools.product(DIRECTIONS, COEFS, SCOPES, (0.0, 1.0), (True, False)))


@pytest.mark.parametrize("direction,coef,scope,alpha_ce,t2", ALL_OPTIONS)
def test_kernel_matches_reference_for_every_option(rng, direction, coef, scope, alpha_ce, t2):
    case = ALL_OPTIONS.index((direction, coef, scope, alpha_ce, t2))
    L = int(torch.randint(3, 41, (1,), generator=rng))
    validity = ("lengths", "mask", "all")[case % 3]
    s, t, gold, lengths, mask = make_case(rng, 3, L, validity=validity, close=case % 2 == 0)
    kw = dict(lengths=lengths, mask=mask, direction=direction, coef=coef, scope=scope, alpha_ce=alpha_ce,
              t2_scaling=t2, temperature=float(torch.empty(1).uniform_(0.5, 4.0, generator=rng)),
              k=int(torch.randint(1, 9, (1,), generator=rng)), window=int(torch.randint(1, 4, (1,), generator=rng)),
              alpha_kl=0.7)
    grad_scale = 1.0 if case % 4 < 2 else 2.5  # both the grad_output == 1 fast path and a real scale
    out, grad = run_triton(s, t, gold, grad_scale, **kw)
    ref, ref_grad = run_reference64(s, t, gold, grad_scale, **kw)
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw, grad_scale),
                         kl_factor=kw["temperature"] ** 2 if t2 else 1.0)


@pytest.mark.parametrize("L", [1, 7, 383, 4099])
@pytest.mark.parametrize("coef,scope", [("constant", "batch"), ("map", "example")])
def test_odd_row_lengths(rng, L, coef, scope):
    B = 2 if L > 1000 else 3
    s, t, gold, lengths, _ = make_case(rng, B, L, validity="lengths")
    kw = dict(lengths=lengths, coef=coef, scope=scope, temperature=2.0)
    out, grad = run_triton(s, t, gold, **kw)
    ref, ref_grad = run_reference64(s, t, gold, **kw)
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw))


@pytest.mark.parametrize("coef,scope", [("constant", "batch"), ("map", "batch"), ("mrr", "example")])
def test_reduction_across_many_programs(rng, coef, scope):
    """One example per program: the last program to finish must reduce every row (ticket counter),
    twice in a row (the counter resets itself)."""
    s, t, gold, lengths, _ = make_case(rng, 5, 19)
    kw = dict(lengths=lengths, coef=coef, scope=scope, rows_per_program=1)
    for _ in range(2):
        out, grad = run_triton(s, t, gold, 3.0, **kw)
        ref, ref_grad = run_reference64(s, t, gold, 3.0, **{k: v for k, v in kw.items() if k != "rows_per_program"})
        assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw, 3.0))


@pytest.mark.parametrize("how", ["lengths", "mask"])
def test_rows_with_exactly_one_valid_position(rng, how):
    B, L = 4, 9
    s, t, _, _, _ = make_case(rng, B, L, validity="all")
    only = torch.randint(0, L, (B,), generator=rng).to(DEVICE)
    if how == "lengths":
        only = torch.zeros_like(only)
        kw = dict(lengths=torch.ones(B, dtype=torch.long, device=DEVICE))
    else:
        mask = torch.zeros(B, L, dtype=torch.bool, device=DEVICE)
        mask[torch.arange(B), only] = True
        kw = dict(mask=mask)
    gold = torch.stack([only, only], dim=1)
    kw.update(coef="map", direction="symmetric")
    out, grad = run_triton(s, t, gold, **kw)
    ref, ref_grad = run_reference64(s, t, gold, **kw)
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw))
    # a one-point distribution: no KL, no CE, no gradient, and the gold is ranked first
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(out.coef_rows == 1.0)
    assert grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_extreme_logits_stay_finite_and_silent(rng, direction):
    B, L = 3, 50
    sign = lambda: torch.where(torch.rand(B, 2, L, generator=rng) < 0.5, -1.0, 1.0)
    s = (sign() * 1e4 + torch.randn(B, 2, L, generator=rng)).to(DEVICE)
    t = (sign() * 1e4 + torch.randn(B, 2, L, generator=rng)).to(DEVICE)
    t[0] = s[0] + 0.01  # a row where teacher == student up to a shift: KL must come out ~0
    gold = torch.randint(0, L, (B, 2), generator=rng).to(DEVICE)
    kw = dict(direction=direction, coef="map", temperature=2.0)  # T = 2: s/T is exact in fp32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the interpreter turns inf - inf into a RuntimeWarning
        out, grad = run_triton(s, t, gold, **kw)
    ref, ref_grad = run_reference64(s, t, gold, **kw)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw))
    assert abs(out.kl_rows[0]).max().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("coef,scope,direction", [("constant", "batch", "forward"), ("map", "example", "symmetric"),
                                                  ("ap", "batch", "reverse")])
def test_half_precision_inputs(rng, dtype, coef, scope, direction):
    s, t, gold, lengths, _ = make_case(rng, 3, 77, dtype=dtype, close=True)
    kw = dict(lengths=lengths, coef=coef, scope=scope, direction=direction)
    out, grad = run_triton(s, t, gold, 2.0, **kw)
    assert out.loss.dtype == torch.float32
    ref, ref_grad = run_reference64(s, t, gold, 2.0, **kw)  # same (upcast) values in float64
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw, 2.0), dtype=dtype)


# ------------------------------------------------------------------------------------------------
# ranking, ties and the authors' mAP@k
# ------------------------------------------------------------------------------------------------


def literal_order(row, valid_row):
    """Rank order written out in Python: valid positions by value descending, index ascending."""
    return sorted((j for j in range(len(row)) if valid_row[j]), key=lambda j: (-float(row[j]), j))


def kaggle_apk(actual, predicted, k):
    """Average precision at k over lists, as the Kaggle notebook the authors cite defines it."""
    if not actual:
        return 0.0
    predicted = predicted[:k]
    score, hits = 0.0, 0
    for i, p in enumerate(predicted):
        if p in actual and p not in predicted[:i]:
            hits += 1
            score += hits / (i + 1.0)
    return score / min(len(actual), k)


def literal_score(row, valid_row, gold, coef, k, context):
    """The authors' steps one by one: top-k list -> relevance list -> score."""
    topk = literal_order(row, valid_row)[:k]
    if coef == "map":  # apk(actual=[1], predicted=0/1 relevance list)
        window = range(gold - context, gold + context)
        return kaggle_apk([1], [1 if j in window else 0 for j in topk], k)
    if coef == "mrr":  # first nonzero of the exact-match relevance list
        rel = [1 if j == gold else 0 for j in topk]
        return 1.0 / (rel.index(1) + 1) if 1 in rel else 0.0
    relevant = [j for j in range(gold - context, gold + context) if 0 <= j < len(row) and valid_row[j]]
    return kaggle_apk(relevant, topk, k)  # textbook AP@k: actual = the relevant positions


def teacher_with_relevance(rel, L=30, gold=15, context=5):
    """A teacher row whose top-len(rel) positions carry the given relevance pattern (window around
    gold = positions 10..19, so relevant picks come from there, irrelevant ones from 0..9)."""
    row = torch.zeros(L)
    inside = iter(range(gold - context, gold + context))
    outside = iter(range(0, gold - context))
    for rank, r in enumerate(rel):
        row[next(inside) if r else next(outside)] = 100.0 - rank
    return row


@pytest.mark.parametrize("rel,expected", [
    ([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], 1.0),
    ([0, 1, 1, 0, 0, 0, 0, 0, 0, 0], 0.5),
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0.1),
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.0),
])
def test_map_coefficient_hand_built_cases(rel, expected):
    row = teacher_with_relevance(rel)
    valid = torch.ones(30, dtype=torch.bool)
    assert literal_score(row, valid, 15, "map", 10, 5) == pytest.approx(expected)
    got = rank_scores(row[None], torch.tensor([15]), valid[None], "map", 10, 5)
    assert got.item() == pytest.approx(expected)
    # the kernel, with both heads carrying the same row: coef = expected
    t = torch.stack([row, row])[None].to(DEVICE)
    out = span_kd_loss(t.clone(), t, torch.tensor([[15, 15]], device=DEVICE), coef="map", backend="triton")
    assert out.coef_rows.reshape(-1).cpu().tolist() == pytest.approx([expected, expected])
    assert out.coef.item() == pytest.approx(expected)


@pytest.mark.parametrize("coef", ["map", "ap", "mrr"])
def test_rank_scores_match_literal_authors_logic(rng, coef):
    B, L, k, context = 6, 40, 10, 5
    # coarse integer logits: many ties, including across the window boundary
    t = torch.randint(0, 6, (B, 2, L), generator=rng).float()
    gold = torch.randint(0, L, (B, 2), generator=rng)
    valid = torch.rand(B, L, generator=rng) < 0.8
    valid[:, 0] = True
    want = torch.tensor([[literal_score(t[b, h], valid[b], int(gold[b, h]), coef, k, context) for h in range(2)]
                         for b in range(B)], dtype=torch.float64)
    got = rank_scores(t, gold, valid[:, None, :], coef, k, context)
    torch.testing.assert_close(got, want)
    out = span_kd_loss(t.to(DEVICE), t.to(DEVICE), gold.to(DEVICE), mask=valid.to(DEVICE), coef=coef,
                       alpha_ce=0.0, backend="triton")
    torch.testing.assert_close(out.coef_rows.double().cpu(), want, rtol=1e-6, atol=1e-7)


def test_ties_are_broken_by_lower_index_first(rng):
    """Equal teacher values in and around the gold window: rank(j) counts equal values at lower
    indices first (stable order), in the reference and in the kernel alike."""
    L, g = 32, 16  # window [11, 20]
    t = torch.randn(4, 2, L, generator=rng) - 10.0
    # row 0: 3 tied maxima before the window and one inside -> first hit at rank 4
    t[0, 0, [2, 5, 9, 12]] = 5.0
    # row 1: the tied maxima straddle the window start: 10 (outside) ties with 11 (inside) -> rank 2
    t[1, 0, [10, 11]] = 5.0
    # row 2: inside first, outside later with the same value -> rank 1
    t[2, 0, [13, 25]] = 5.0
    # row 3: every position tied: stable order 0, 1, ... -> first relevant (11) is rank 12 > k
    t[3, 0] = 1.0
    t[:3, 0, g] = -100.0  # the gold itself ranks last in rows 0-2 (mrr: 0 there, as in row 3)
    # end heads: a tie between the gold itself and an earlier position (mrr sees rank 2)
    t[:, 1, [3, g]] = 7.0
    gold = torch.full((4, 2), g)
    valid = torch.ones(4, 1, L, dtype=torch.bool)
    for coef, expected_start in (("map", [1 / 4, 1 / 2, 1.0, 0.0]), ("mrr", [0.0, 0.0, 0.0, 0.0])):
        ref = rank_scores(t, gold, valid, coef, 10, 5)
        assert ref[:, 0].tolist() == pytest.approx(expected_start)
        assert ref[:, 1].tolist() == pytest.approx([1 / 2] * 4)
        out = span_kd_loss(t.to(DEVICE), t.to(DEVICE), gold.to(DEVICE), coef=coef, alpha_ce=0.0, backend="triton")
        torch.testing.assert_close(out.coef_rows.double().cpu(), ref, rtol=0, atol=1e-7)
    order = stable_rank_order(t, valid)
    for b in range(4):
        assert order[b, 0].tolist() == literal_order(t[b, 0], [True] * L)


def test_stable_order_equals_topk_without_ties(rng):
    """Away from ties the reference order is exactly torch.topk's (what the authors call)."""
    t = torch.randn(8, 2, 384, generator=rng)
    order = stable_rank_order(t, torch.ones(1, 1, 384, dtype=torch.bool))
    assert torch.equal(order[..., :10], torch.topk(t, 10, dim=-1).indices)


def test_bf16_teacher_with_natural_ties(rng):
    """bf16 has 8 significant bits: random teacher logits tie often; kernel and reference agree."""
    s, t, gold, _, _ = make_case(rng, 8, 300, dtype=torch.bfloat16, validity="all", scale=0.05)
    assert t.float().unique().numel() < t.numel() // 2  # plenty of ties
    for coef in ("map", "ap", "mrr"):
        out = span_kd_loss(s, t, gold, coef=coef, backend="triton")
        ref = span_kd_reference(s, t, gold, coef=coef)
        torch.testing.assert_close(out.coef_rows.double().cpu(), ref.coef_rows.double().cpu(), rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# NaN, buffers, backward semantics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_propagates_and_masked_nan_is_ignored(rng, backend):
    s, t, gold, _, _ = make_case(rng, 3, 20, validity="all")
    lengths = torch.tensor([20, 15, 20], device=DEVICE)
    gold = gold.clamp(max=14)
    kw = dict(lengths=lengths, coef="map", backend=backend)
    s_nan = s.clone()
    s_nan[1, 0, 3] = float("nan")
    s_nan.requires_grad_(True)
    out = span_kd_loss(s_nan, t, gold, **kw)
    out.loss.backward()
    assert torch.isnan(out.loss)
    assert out.coef.item() == pytest.approx(out.coef_rows.mean().item())  # teacher-only: still finite
    assert torch.isnan(out.kl_rows[1, 0]) and torch.isnan(out.ce_rows[1, 0])
    assert torch.isfinite(out.kl_rows[0]).all() and torch.isfinite(out.kl_rows[2]).all()
    assert torch.isnan(s_nan.grad[1, 0, :15]).all()
    t_nan = t.clone()
    t_nan[2, 1, 7] = float("nan")
    assert torch.isnan(span_kd_loss(s, t_nan, gold, **kw).loss)
    # NaN at a position outside lengths is excluded like any masked value
    s_masked = s.clone()
    s_masked[1, 1, 17] = float("nan")
    got = span_kd_loss(s_masked, t, gold, **kw).loss
    want = span_kd_reference(s.double(), t.double(), gold, lengths=lengths, coef="map").loss
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(want.item(), rel=2e-5)


def _nan_pattern(out, grad) -> dict[str, torch.Tensor]:
    parts = dict(loss=out.loss, coef=out.coef, ce_rows=out.ce_rows, kl_rows=out.kl_rows, coef_rows=out.coef_rows,
                 grad=grad)
    return {k: torch.isnan(v.detach()).cpu() for k, v in parts.items() if v is not None}


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("coef,scope", [("constant", "batch"), ("map", "batch"), ("ap", "example")])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_nan_pattern_matches_reference(rng, direction, coef, scope, side):
    """Exactly the outputs the float64 reference makes NaN are NaN (module docstring, "NaN"). With
    rows_per_program=2 the NaN example shares its tile with a neighbour, which must stay finite (unless
    a NaN batch coefficient makes everything NaN)."""
    s, t, gold, lengths, _ = make_case(rng, 5, 37, validity="lengths")
    lengths[2] = 37
    b, h = 2, int(torch.randint(0, 2, (1,), generator=rng))
    pos = int(torch.randint(0, 37, (1,), generator=rng))
    (s if side == "student" else t)[b, h, pos] = float("nan")
    kw = dict(lengths=lengths, coef=coef, scope=scope, direction=direction, alpha_ce=0.7)
    out, grad = run_triton(s, t, gold, 2.0, rows_per_program=2, **kw)
    ref, ref_grad = run_reference64(s, t, gold, 2.0, **kw)
    got, want = _nan_pattern(out, grad), _nan_pattern(ref, ref_grad)
    assert got.keys() == want.keys()
    batch_coef_nan = side == "teacher" and coef != "constant" and scope == "batch"
    if batch_coef_nan:
        # The reference keeps 0 at masked positions; the kernel's backward (no mask at hand) makes all of dS NaN.
        valid = (torch.arange(37)[None, :] < lengths[:, None])[:, None, :].expand(-1, 2, -1)
        assert got["grad"].all() and want["grad"][valid].all(), "a NaN batch coefficient must make dS NaN"
        del got["grad"], want["grad"]
    for name in want:
        assert torch.equal(got[name], want[name]), f"NaN pattern of {name} differs: got {got[name]}, want {want[name]}"
    assert got["loss"] and got["kl_rows"][b, h]
    assert bool(got["ce_rows"][b, h]) == (side == "student")
    assert bool(got["coef"]) == (side == "teacher" and coef != "constant")  # the applied (mean) weight
    others = torch.ones(5, dtype=torch.bool)
    others[b] = False
    assert not got["kl_rows"][others].any()
    if not batch_coef_nan:  # other examples: finite
        assert got["grad"][b, h, : int(lengths[b])].all() and not got["grad"][others].any()


def test_gradient_buffer_is_fresh_and_inputs_untouched(rng):
    s, t, gold, lengths, _ = make_case(rng, 3, 33)
    s = s.requires_grad_(True)
    t = t.requires_grad_(True)  # must still get no gradient
    s_before, t_before, g_before = s.detach().clone(), t.detach().clone(), gold.clone()
    out = span_kd_loss(s, t, gold, lengths=lengths, coef="map", scope="example", backend="triton")
    out.loss.backward(retain_graph=True)
    first = s.grad.clone()
    assert s.grad.data_ptr() not in (s.data_ptr(), t.data_ptr())
    assert torch.equal(s.detach(), s_before) and torch.equal(t.detach(), t_before) and torch.equal(gold, g_before)
    assert t.grad is None
    assert not out.kl_rows.requires_grad and not out.coef.requires_grad
    # retain_graph: the saved dS must neither be rescaled in place nor adopted as .grad (which the
    # next accumulation would then double): three passes give exactly 3x
    out.loss.backward(retain_graph=True)
    out.loss.backward()
    torch.testing.assert_close(s.grad, 3 * first)


@pytest.mark.parametrize("coef,scope", [("constant", "batch"), ("map", "batch"), ("map", "example")])
def test_backward_scales_with_grad_output(rng, coef, scope):
    s, t, gold, lengths, _ = make_case(rng, 4, 21)
    kw = dict(lengths=lengths, coef=coef, scope=scope)
    _, g1 = run_triton(s, t, gold, 1.0, **kw)
    _, g2 = run_triton(s, t, gold, 2.0, **kw)
    _, g3 = run_triton(s, t, gold, -0.37, **kw)
    assert torch.equal(g2, 2 * g1)  # x2 is exact in fp32
    torch.testing.assert_close(g3, -0.37 * g1, rtol=1e-6, atol=1e-9)
    assert g1.abs().max() > 0


def test_pair_inputs_match_stacked_inputs(rng):
    s, t, gold, lengths, _ = make_case(rng, 3, 25)
    kw = dict(lengths=lengths, coef="ap", scope="example", backend="triton")
    stacked = s.clone().requires_grad_(True)
    start, end = s[:, 0].clone().requires_grad_(True), s[:, 1].clone().requires_grad_(True)
    a = span_kd_loss(stacked, t, gold, **kw)
    b = span_kd_loss((start, end), (t[:, 0], t[:, 1]), (gold[:, 0], gold[:, 1]), **kw)
    (a.loss * 1.5).backward()
    (b.loss * 1.5).backward()
    assert a.loss.item() == b.loss.item()
    assert torch.equal(stacked.grad[:, 0], start.grad) and torch.equal(stacked.grad[:, 1], end.grad)


def test_strided_student_view(rng):
    """[B, L, 2] logits as a model emits them, permuted to [B, 2, L] without a copy."""
    raw = torch.randn(3, 31, 2, generator=rng).to(DEVICE).requires_grad_(True)
    t = torch.randn(3, 2, 31, generator=rng).to(DEVICE)
    gold = torch.randint(0, 31, (3, 2), generator=rng).to(DEVICE)
    out = span_kd_loss(raw.permute(0, 2, 1), t, gold, coef="map", backend="triton")
    out.loss.backward()
    ref_in = raw.detach().double().requires_grad_(True)
    ref = span_kd_reference(ref_in.permute(0, 2, 1), t.double(), gold, coef="map")
    ref.loss.backward()
    torch.testing.assert_close(out.loss.double(), ref.loss, **VALUE_TOL)
    torch.testing.assert_close(raw.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-8)


def test_forward_without_grad_and_module(rng):
    """Under no_grad a student that requires grad gets the launch without the dS sweep
    (COMPUTE_GRAD=False); the module call outside it gets the autograd path. Same loss."""
    s, t, gold, lengths, _ = make_case(rng, 3, 18)
    s = s.requires_grad_(True)
    with torch.no_grad():
        a = span_kd_loss(s, t, gold, lengths=lengths, coef="mrr", backend="triton")
    assert a.loss.grad_fn is None and not a.loss.requires_grad
    module = SpanKDLoss(coef="mrr", backend="triton")
    b = module(s, t, gold, lengths=lengths)
    assert type(b.loss.grad_fn).__name__ == "SpanKDFunctionBackward"
    assert a.loss.item() == b.loss.item()
    assert "coef='mrr'" in repr(module)
    ref = span_kd_reference(s.double(), t.double(), gold, lengths=lengths, coef="mrr")
    assert a.loss.item() == pytest.approx(ref.loss.item(), rel=2e-5)


def test_invalid_gold_without_validation_gives_nan(rng):
    s, t, gold, _, _ = make_case(rng, 3, 12, validity="all")
    gold[1, 1] = 12  # == L: outside [0, L)
    for backend in ("triton", "torch"):
        out = span_kd_loss(s, t, gold, backend=backend, validate=False)
        assert torch.isnan(out.loss) and torch.isnan(out.ce_rows[1, 1])
        assert torch.isfinite(out.ce_rows[0]).all()
        with pytest.raises(ValueError, match=r"gold end positions must lie in \[0, L=12\); examples \[1\]"):
            span_kd_loss(s, t, gold, backend=backend, validate=True)


def test_bad_inputs_raise_clear_errors(rng):
    s, t, gold, _, _ = make_case(rng, 2, 10, validity="all")
    with pytest.raises(ValueError, match="lengths must lie in"):
        span_kd_loss(s, t, gold, lengths=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"examples \[1\] have no valid position"):
        span_kd_loss(s, t, gold, mask=torch.tensor([[True] * 10, [False] * 10]))
    with pytest.raises(ValueError, match="masked"):
        span_kd_loss(s, t, torch.tensor([[0, 0], [9, 0]]), lengths=torch.tensor([10, 5]))
    with pytest.raises(ValueError, match=r"student must be \[B, 2, L\]"):
        span_kd_loss(s[:, :1], t, gold)
    with pytest.raises(ValueError, match="same \\[B, L\\]"):
        span_kd_loss(s, t[..., :9], gold)
    with pytest.raises(ValueError, match="integer dtype"):
        span_kd_loss(s, t, gold.float())
    with pytest.raises(ValueError, match="gold positions are required"):
        span_kd_loss(s, t, None, coef="map")
    with pytest.raises(ValueError, match=r"SpanKDOptions.temperature=0"):
        span_kd_loss(s, t, gold, temperature=0)
    with pytest.raises(ValueError, match=r"SpanKDOptions.coef='mAP'"):
        SpanKDOptions(coef="mAP")
    with pytest.raises(ValueError, match="float64"):
        span_kd_loss(s.double(), t.double(), gold, backend="triton")
    # gold is optional when neither CE nor a ranked coefficient needs it
    assert torch.isfinite(span_kd_loss(s, t, None, alpha_ce=0.0).loss)


# ------------------------------------------------------------------------------------------------
# the reference itself
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction,coef,scope,alpha_ce,t2",
                         list(itertools.product(DIRECTIONS, ("constant", "map"), SCOPES, (0.0, 1.0), (True, False))))
def test_reference_gradcheck(rng, direction, coef, scope, alpha_ce, t2):
    s, t, gold, _, mask = make_case(rng, 2, 6, dtype=torch.float64, validity="mask")
    s, t, gold, mask = s.cpu(), t.cpu(), gold.cpu(), mask.cpu()
    kw = dict(mask=mask, direction=direction, coef=coef, scope=scope, alpha_ce=alpha_ce, t2_scaling=t2,
              temperature=1.7, window=2, k=3)
    fn = lambda x: span_kd_reference(x, t, gold, **kw).loss
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(True),), eps=1e-6, atol=1e-7, fast_mode=True)


def test_reference_matches_authors_kl_and_ce(rng):
    """Without masks the reference is the authors' formula written with torch.nn losses."""
    s, t, gold, _, _ = make_case(rng, 5, 384, dtype=torch.float64, validity="all")
    s, t, gold, T = s.cpu(), t.cpu(), gold.cpu(), 2.0
    kld = torch.nn.KLDivLoss(reduction="batchmean")
    fw = [kld(torch.log_softmax(s[:, h] / T, -1), torch.softmax(t[:, h] / T, -1)) * T**2 for h in range(2)]
    ce = [torch.nn.functional.cross_entropy(s[:, h], gold[:, h]) for h in range(2)]
    want = (ce[0] + ce[1]) / 2 + (fw[0] + fw[1]) / 2
    got = span_kd_reference(s, t, gold, temperature=T)
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-12)
    rv = sum(kld(torch.log_softmax(t[:, h] / T, -1), torch.softmax(s[:, h] / T, -1)) * T**2 for h in range(2)) / 2
    got_rv = span_kd_reference(s, t, gold, temperature=T, direction="reverse", alpha_ce=0.0)
    assert got_rv.loss.item() == pytest.approx(rv.item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# GPU compilation (offline) and GPU-only checks
# ------------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import span_kd as m

def sig(fn, ptrs):
    cx = {p.name for p in fn.params if p.is_constexpr}
    return {n: ptrs.get(n, "constexpr" if n in cx else "i32") for n in fn.arg_names}

fwd = sig(m._span_kd_fwd_kernel, {
    "s0_ptr": "*bf16", "s1_ptr": "*bf16", "t0_ptr": "*fp16", "t1_ptr": "*fp16", "gold0_ptr": "*i64",
    "gold1_ptr": "*i64", "len_ptr": "*i64", "mask_ptr": "*u8", "g0_ptr": "*bf16", "g1_ptr": "*bf16",
    "k0_ptr": "*fp32", "k1_ptr": "*fp32", "ce_ptr": "*i32", "kl_ptr": "*i32", "score_ptr": "*i32",
    "loss_ptr": "*fp32", "coef_ptr": "*fp32", "counter_ptr": "*i32", "T": "fp32", "T2F": "fp32",
    "alpha_ce": "fp32", "alpha_kl": "fp32"})
base = dict(DIRECTION=2, HAS_CE=True, COEF_MODE=1, SCOPE_EXAMPLE=False, HAS_LENGTHS=True, HAS_MASK=True,
            COMPUTE_GRAD=True, SPLIT=True, ROWS=2, BLOCK_L=512, WBLOCK=16, BLOCK_R=64)
# the launcher specialises integer arguments equal to 1 (B = 1, L = 1, k = 1, mrr's window) to constants
tiny = dict(base, B=1, L=1, topk=1, win_len=1, stride_sl=1, stride_tl=1, stride_gl=1, BLOCK_L=1, ROWS=1)
for cx in (base, dict(base, COEF_MODE=2, SCOPE_EXAMPLE=True, SPLIT=False, ROWS=1, BLOCK_L=4096), tiny):
    ptx = triton.compile(ASTSource(fn=m._span_kd_fwd_kernel, signature=fwd, constexprs=cx),
                         target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    print("nan-tests", len(re.findall(r"setp\.(?:nan|neu)\.", ptx)))  # LLVM may test the bf16/fp16 input
bwd = sig(m._span_kd_bwd_kernel, dict(o0_ptr="*bf16", o1_ptr="*bf16", a0_ptr="*fp32", a1_ptr="*fp32",
                                      k0_ptr="*fp32", k1_ptr="*fp32", go_ptr="*fp32", coef_ptr="*fp32"))
triton.compile(ASTSource(fn=m._span_kd_bwd_kernel, signature=bwd,
                         constexprs=dict(HAS_A=True, SPLIT=True, BLOCK=4096)), target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The interpreter does not type-check like the compiler: build real sm_90 cubins offline
    (triton ships ptxas; no GPU or driver needed). The PTX must keep the explicit NaN tests."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and shutil.which("ptxas") is None:
        pytest.skip("triton's bundled ptxas is not available")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), "xdist-span-kd-triton-cache")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    # The explicit NaN test (x != x) must survive into the PTX (compiled max/min drop NaN).
    counts = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("nan-tests")]
    assert len(counts) == 3 and min(counts) > 0, proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("coef,scope", [("constant", "batch"), ("map", "batch"), ("ap", "example")])
def test_cuda_launch_budget_and_values(rng, coef, scope):
    from kernels.bench.harness import count_launches

    s, t, gold, lengths, _ = make_case(rng, 32, 384, dtype=torch.bfloat16)
    s = s.requires_grad_(True)

    def step():
        out = span_kd_loss(s, t, gold, lengths=lengths, coef=coef, scope=scope)
        (out.loss * 2).backward()
        s.grad = None

    assert count_launches(step) <= 2
    kw = dict(lengths=lengths, coef=coef, scope=scope)
    out, grad = run_triton(s, t, gold, 2.0, **kw)
    ref, ref_grad = run_reference64(s, t, gold, 2.0, **kw)
    assert_outputs_close(out, ref, grad, ref_grad, grad_atol(s, t, kw, 2.0), dtype=torch.bfloat16)


def test_module_dispatches_to_reference_on_cpu_tensors(rng):
    s, t, gold, _, _ = make_case(rng, 2, 9, validity="all")
    s, t, gold = s.cpu(), t.cpu(), gold.cpu()
    assert span_kd_module._use_triton(span_kd_module._normalise(s, t, gold, None, None, SpanKDOptions()),
                                      "auto") is False
    a = span_kd_loss(s, t, gold)
    b = span_kd_reference(s, t, gold)
    assert a.loss.item() == b.loss.item() and math.isfinite(a.loss.item())
