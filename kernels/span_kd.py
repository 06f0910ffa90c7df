"""Fused span knowledge-distillation loss for extractive QA (start/end logits), Triton + PyTorch.

The loss of Carrino et al.'s self-distillation for G-XLT QA (methods.md §A.4–A.5), in one kernel
launch for the forward pass (gradient included) and one for the backward pass.

Notation. B examples, 2 heads h (start, end), L positions; N = 2B rows (b, h). Student logits s,
teacher logits t (each [B, 2, L]), gold positions g[b, h], valid positions V_bh (default: all L;
``lengths`` and/or ``mask`` remove positions from every softmax and from the ranking).
a = s/T, c = t/T, q = softmax_V(a) (student), p = softmax_V(c) (teacher), F = T² if t2_scaling else 1.

Per row (b, h)::

    KL_fwd = Σ_V p (log p − log q)          (KL(teacher‖student), the authors' "fw", default)
    KL_rev = Σ_V q (log q − log p)          ("rv")
    KL_sym = KL_fwd + KL_rev                ("sym")
    kl_rows[b, h] = F · KL_dir
    ce_rows[b, h] = logsumexp_V(s) − s_g    (T = 1; NaN if g is outside [0, L) or not valid)
    coef_rows[b, h] = rank score of the teacher row (below); only for coef != "constant"

Loss (``mean`` = mean over all N rows; equals the authors' (X_start + X_end)/2 with batchmean)::

    loss = alpha_ce · mean(ce_rows) + KD
    coef="constant":         KD = alpha_kl · mean(kl_rows);              coef = alpha_kl
    ranked, scope="batch":   coef = alpha_kl · mean(coef_rows);          KD = coef · mean(kl_rows)
    ranked, scope="example": w_b = alpha_kl · (coef_rows[b,0] + coef_rows[b,1]) / 2
                             KD = mean_{b,h}(w_b · kl_rows[b, h]);       coef = mean_b(w_b)

"batch" is the authors' choice (one scalar per micro-batch; ``alpha_kl`` = 1 reproduces them). The
coefficient is computed from the teacher only and carries no gradient. The teacher never gets one.

Rank scores (k = ``k``, w = ``window``; relevant set R = {g−w, ..., g+w−1} ∩ V, or {g} ∩ V for mrr):
- "map" (authors' code): 1 / (rank of the first relevant position) if it is ≤ k, else 0. Their
  Kaggle ``apk(actual=[1], predicted=relevance_list)`` only counts the first hit.
- "ap": textbook AP@k = Σ_{j ∈ R, rank(j) ≤ k} precision@rank(j) / min(k, |R|)  (0 if R is empty).
- "mrr": relevant = {g} only: 1/rank(g) if ≤ k else 0 (the authors' ``--use_mrr_loss_coefficients``).

Ranking and ties. rank(j) = 1 + #{i ∈ V : t_i > t_j or (t_i = t_j and i < j)}: value descending,
index ascending, over raw teacher logits (T > 0 does not change the order). The authors call
``softmax(t/T).topk(10)``, whose order for equal values is unspecified: on CPU torch 2.13
``topk`` does *not* put the lower index first (e.g. 10 equal values come back as 24, 28, 27, ...),
and the CUDA implementation (radix select) documents no order either. The reference therefore
defines the order explicitly and deterministically (stable sort) and the kernel counts with the
same rule, without sorting: results are identical on every device. Away from ties this equals
``torch.topk`` order; ranking logits instead of float probabilities also avoids the artificial ties
of probabilities that underflow to 0.

Numerics. Everything is fp32 in the kernel (fp16/bf16/fp32 in; fp64 goes to the reference). The
row statistics are one pass with online (max, sum) rescaling and the centred factored form
``KL_fwd = Σ e^{c−M_c}((c−M_c) − (a−M_a))/d_c − log d_c + log d_a`` (and its mirror for KL_rev),
which stays accurate when teacher ≈ student (self-distillation) and for logits of ±1e4. q − p is
formed in fp32 and rounded once, when dS is stored in the student's dtype. Masked lanes use
−1e30 (never −inf, so no inf − inf).

NaN. A NaN logit at a valid position of row (b, h) makes kl_rows[b, h], the loss and dS at every
valid position of that row NaN; ce_rows[b, h] too if the NaN is in the student (CE reads only the
student); coef_rows[b, h] if it is in the teacher (the ranking is undefined), and with it the
coefficient of its example (scope "example") or of the whole batch (scope "batch": then all of dS,
masked positions included, is NaN). Other rows stay finite. The kernel counts NaNs with x != x and sets these outputs
explicitly, so this holds on every backend and Triton version (the NaN behaviour of max/min is
not specified: compiled ``tl.max`` drops NaN). A NaN at a masked position is ignored like any
masked value; a row with no valid position gives NaN (``validate`` reports it as an error first
when enabled).

Launches. Forward: one kernel (rows in [ROWS, BLOCK_L] tiles, the last program to finish reduces
the per-row values into the loss through a self-resetting ticket counter). Backward: one kernel
writing a fresh dS = grad_output · (stored dS) (or, for a ranked batch-scope coefficient, which
is known only after every row is seen, grad_output · (dS_ce + coef · dS_kl), from two fp32
buffers the forward kept; that backward launch always runs). Reading grad_output on the host to
skip the multiply would cost a device→host sync, which is dearer than the launch, so on CUDA the
multiply always runs; on CPU (interpreter) the skip is taken when grad_output == 1. A fresh buffer
(never an in-place rescale) keeps ``retain_graph`` correct. Inside the forward kernel the gradient
is a second sweep over s and t (rows up to BLOCK_L = 4096 are one tile; the re-read hits L2 at QA
sizes); longer rows loop over tiles with the same online statistics.

Limits. The ticket counter is one int32 per (device, stream): launches on one stream serialise, so
they cannot collide. CUDA-graph capture has not been tried. The kernels were verified under the
Triton interpreter and compiled to sm_90 cubins offline, not yet run on a GPU. The Triton path
needs fp32/fp16/bf16 logits (fp64 uses the reference).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

try:  # GPU users always have triton; CPU-only installs still get the reference path.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton

    class _NoTriton:
        """Stand-in so the kernels below stay plain, never-called functions without triton."""

        @staticmethod
        def jit(fn=None, **_):
            return fn

        @staticmethod
        def cdiv(a, b):
            return -(-a // b)

    class _NoTl:
        constexpr = None

    triton, tl = _NoTriton(), _NoTl()
    HAS_TRITON = False

Direction = Literal["forward", "reverse", "symmetric"]
CoefMode = Literal["constant", "map", "ap", "mrr"]
Scope = Literal["batch", "example"]
Backend = Literal["auto", "triton", "torch"]

_DIRECTIONS = {"forward": 0, "reverse": 1, "symmetric": 2}
_COEF_MODES = {"constant": 0, "map": 1, "mrr": 1, "ap": 2}  # map/mrr share the first-hit code path
_SCOPES = ("batch", "example")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_FILL = -1.0e30  # masked lanes: large finite negative, never -inf (no inf - inf)


@dataclass(frozen=True)
class SpanKDOptions:
    """Options of the span KD loss (see the module docstring for the formulas).

    temperature: T > 0 for the KD softmaxes (the CE term always uses T = 1). Authors: 2.
    k, window: top-k cut-off and half-width w of the relevant window [g − w, g + w − 1] (10, 5).
    direction: "forward" KL(teacher‖student), "reverse" KL(student‖teacher), or "symmetric" (sum).
    alpha_ce: weight of the hard-label CE; 0 skips its computation (``ce_rows`` is then None).
    alpha_kl: constant KD weight; with a ranked ``coef`` it multiplies the coefficient.
    coef: "constant", "map" (authors), "ap" (textbook AP@k) or "mrr" (exact-match MRR@k).
    scope: "batch" (one coefficient per call, authors) or "example" (per example).
    t2_scaling: multiply KL by T² (authors, Hinton et al.); False gives Liger's unscaled KL.
    """

    temperature: float = 2.0
    k: int = 10
    window: int = 5
    direction: Direction = "forward"
    alpha_ce: float = 1.0
    alpha_kl: float = 1.0
    coef: CoefMode = "constant"
    scope: Scope = "batch"
    t2_scaling: bool = True

    def __post_init__(self) -> None:
        def bad(field: str, value: object, expected: str) -> ValueError:
            return ValueError(f"SpanKDOptions.{field}={value!r}: expected {expected}")

        t = self.temperature
        if not isinstance(t, int | float) or not t > 0 or t == float("inf"):
            raise bad("temperature", t, "a finite number > 0")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise bad("k", self.k, "an int >= 1")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise bad("window", self.window, "an int >= 1")
        if self.direction not in _DIRECTIONS:
            raise bad("direction", self.direction, f"one of {sorted(_DIRECTIONS)}")
        if self.coef not in _COEF_MODES:
            raise bad("coef", self.coef, f"one of {sorted(_COEF_MODES)}")
        if self.scope not in _SCOPES:
            raise bad("scope", self.scope, f"one of {list(_SCOPES)}")
        for name in ("alpha_ce", "alpha_kl"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise bad(name, value, "a finite number >= 0")
        if not isinstance(self.t2_scaling, bool):
            raise bad("t2_scaling", self.t2_scaling, "a bool")

    @property
    def has_ce(self) -> bool:
        return self.alpha_ce != 0

    @property
    def ranked(self) -> bool:
        return self.coef != "constant"

    @property
    def needs_gold(self) -> bool:
        return self.has_ce or self.ranked

    @property
    def t2_factor(self) -> float:
        return float(self.temperature) ** 2 if self.t2_scaling else 1.0

    def window_bounds(self) -> tuple[int, int]:
        """(offset below gold, number of positions) of the relevant window."""
        return (0, 1) if self.coef == "mrr" else (self.window, 2 * self.window)


class SpanKDOutput(NamedTuple):
    """Result of :func:`span_kd_loss`.

    loss: 0-dim, fp32 (fp64 for fp64 inputs); the only output with a gradient (w.r.t. the student).
    ce_rows: [B, 2] per-example, per-head CE at T = 1 (start, end); None when alpha_ce == 0.
    kl_rows: [B, 2] per-head KL (× T² when t2_scaling).
    coef_rows: [B, 2] per-head rank score in [0, 1]; None for coef="constant".
    coef: 0-dim, the weight applied to the KD term (alpha_kl × batch score, or mean example weight).
    """

    loss: Tensor
    ce_rows: Tensor | None
    kl_rows: Tensor
    coef_rows: Tensor | None
    coef: Tensor


# --------------------------------------------------------------------------------------------------
# Input normalisation and validation (shared by both backends)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    s0: Tensor  # [B, L] student start logits (a view; never written)
    s1: Tensor  # [B, L] student end logits
    t0: Tensor  # [B, L] teacher start logits
    t1: Tensor  # [B, L] teacher end logits
    gold0: Tensor | None  # [B] int
    gold1: Tensor | None  # [B] int
    lengths: Tensor | None  # [B] int
    mask: Tensor | None  # [B, L] bool/int
    B: int
    L: int
    student_3d: Tensor | None  # the student when given as one [B, 2, L] tensor (else a pair of [B, L])


def _split_heads(x: Tensor | Sequence[Tensor], name: str) -> tuple[Tensor, Tensor, bool]:
    if isinstance(x, Tensor):
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(f"span_kd: {name} must be [B, 2, L] (start, end) or a pair of [B, L]; "
                             f"got shape {tuple(x.shape)}")
        return x[:, 0], x[:, 1], True
    if isinstance(x, Sequence) and len(x) == 2 and all(isinstance(h, Tensor) for h in x):
        x0, x1 = x
        if x0.dim() != 2 or x0.shape != x1.shape:
            raise ValueError(f"span_kd: {name} pair must be two [B, L] tensors of equal shape; got "
                             f"{tuple(x0.shape)} and {tuple(x1.shape)}")
        return x0, x1, False
    raise TypeError(f"span_kd: {name} must be a Tensor [B, 2, L] or a pair of [B, L] tensors; got {type(x)}")


def _split_gold(gold: Tensor | Sequence[Tensor] | None, B: int) -> tuple[Tensor | None, Tensor | None]:
    if gold is None:
        return None, None
    if isinstance(gold, Tensor):
        if gold.shape != (B, 2):
            raise ValueError(f"span_kd: gold must be [B, 2] = [{B}, 2] (start, end); got {tuple(gold.shape)}")
        g0, g1 = gold[:, 0], gold[:, 1]
    elif isinstance(gold, Sequence) and len(gold) == 2 and all(isinstance(g, Tensor) for g in gold):
        g0, g1 = gold
        if g0.shape != (B,) or g1.shape != (B,):
            raise ValueError(f"span_kd: gold pair must be two [B] = [{B}] tensors; got "
                             f"{tuple(g0.shape)} and {tuple(g1.shape)}")
    else:
        raise TypeError(f"span_kd: gold must be a [B, 2] int tensor or a pair of [B] tensors; got {type(gold)}")
    for g in (g0, g1):
        if g.dtype.is_floating_point or g.dtype.is_complex or g.dtype == torch.bool:
            raise ValueError(f"span_kd: gold positions must be an integer dtype; got {g.dtype}")
    return g0, g1


def _normalise(student, teacher, gold, lengths, mask, opts: SpanKDOptions) -> _Inputs:
    s0, s1, stacked = _split_heads(student, "student")
    student_3d = student if stacked else None
    t0, t1, _ = _split_heads(teacher, "teacher")
    if s0.shape != t0.shape:
        raise ValueError(f"span_kd: student rows {tuple(s0.shape)} and teacher rows {tuple(t0.shape)} "
                         "must have the same [B, L]")
    for name, x in (("student", s0), ("teacher", t0)):
        if not x.dtype.is_floating_point:
            raise ValueError(f"span_kd: {name} logits must be floating point; got {x.dtype}")
    B, L = s0.shape
    if B < 1 or L < 1:
        raise ValueError(f"span_kd: need B >= 1 and L >= 1; got B={B}, L={L}")
    g0, g1 = _split_gold(gold, B)
    if opts.needs_gold and g0 is None:
        raise ValueError("span_kd: gold positions are required when alpha_ce > 0 or coef != 'constant'")
    if lengths is not None:
        if not isinstance(lengths, Tensor) or lengths.shape != (B,) or lengths.dtype.is_floating_point:
            raise ValueError(f"span_kd: lengths must be an integer tensor [B] = [{B}]; got "
                             f"{getattr(lengths, 'shape', type(lengths))} {getattr(lengths, 'dtype', '')}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != (B, L) or mask.dtype.is_floating_point:
            raise ValueError(f"span_kd: mask must be a bool/integer tensor [B, L] = [{B}, {L}]; got "
                             f"{getattr(mask, 'shape', type(mask))} {getattr(mask, 'dtype', '')}")
    device = s0.device
    for name, x in (("teacher", t0), ("gold", g0), ("lengths", lengths), ("mask", mask)):
        if x is not None and x.device != device:
            raise ValueError(f"span_kd: {name} is on {x.device}, student on {device}")
    return _Inputs(s0, s1, t0, t1, g0, g1, lengths, mask, B, L, student_3d)


def _valid_positions(inp: _Inputs) -> Tensor:
    """[B, L] bool: positions inside the softmax/ranking."""
    valid = torch.ones(inp.B, inp.L, dtype=torch.bool, device=inp.s0.device)
    if inp.lengths is not None:
        valid &= torch.arange(inp.L, device=valid.device)[None, :] < inp.lengths[:, None]
    if inp.mask is not None:
        valid &= inp.mask != 0
    return valid


def _first_bad(bad: Tensor, limit: int = 5) -> list[int]:
    return torch.nonzero(bad.reshape(-1)).reshape(-1)[:limit].tolist()


def _validate_values(inp: _Inputs, opts: SpanKDOptions, validate: bool | None) -> None:
    """Data-dependent checks (needs the values on the host: a sync on CUDA). ``validate=None``: only
    for CPU tensors."""
    if not (validate if validate is not None else not inp.s0.is_cuda):
        return
    if inp.lengths is not None:
        bad = (inp.lengths < 1) | (inp.lengths > inp.L)
        if bool(bad.any()):
            idx = _first_bad(bad)
            raise ValueError(f"span_kd: lengths must lie in [1, L={inp.L}]; examples {idx} have "
                             f"{inp.lengths[idx].tolist()}")
    valid = _valid_positions(inp)
    empty = ~valid.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"span_kd: examples {_first_bad(empty)} have no valid position (mask/lengths)")
    if inp.gold0 is None:
        return
    for head, g in (("start", inp.gold0), ("end", inp.gold1)):
        out = (g < 0) | (g >= inp.L)
        if bool(out.any()):
            idx = _first_bad(out)
            raise ValueError(f"span_kd: gold {head} positions must lie in [0, L={inp.L}); examples {idx} "
                             f"have {g[idx].tolist()}")
        if opts.has_ce:
            at_gold = valid.gather(1, g.long()[:, None])[:, 0]
            if not bool(at_gold.all()):
                idx = _first_bad(~at_gold)
                raise ValueError(f"span_kd: gold {head} positions {g[idx].tolist()} of examples {idx} are "
                                 "masked (outside lengths/mask), so their CE is undefined")


# --------------------------------------------------------------------------------------------------
# PyTorch reference: the CPU path and the test oracle (plain differentiable ops, any float dtype)
# --------------------------------------------------------------------------------------------------


def stable_rank_order(teacher: Tensor, valid: Tensor | None = None) -> Tensor:
    """Positions of each row in ranking order: valid before masked, value descending, index ascending.

    teacher: [..., L]; valid: bool broadcastable to it (None: all valid). Deterministic on every
    device (stable sort), unlike ``torch.topk`` whose order among equal values is unspecified.
    """
    by_value = torch.sort(teacher, dim=-1, descending=True, stable=True).indices
    if valid is None:
        return by_value
    valid = valid.expand_as(teacher)
    valid_first = torch.sort(valid.gather(-1, by_value).to(torch.int8), dim=-1, descending=True,
                             stable=True).indices
    return by_value.gather(-1, valid_first)


def rank_scores(teacher: Tensor, gold: Tensor, valid: Tensor | None, coef: CoefMode, k: int,
                window: int) -> Tensor:
    """Per-row rank score (see module docstring) from teacher logits, no gradient.

    teacher: [..., L]; gold: [...] int; valid: bool broadcastable to teacher, or None (all valid).
    Returns float64 [...]; NaN for a row with a NaN teacher logit at a valid position (its ranking is
    undefined). Uses a stable sort: an oracle independent of the kernel's counting.
    """
    with torch.no_grad():
        nan = torch.isnan(teacher)
        nan_row = (nan if valid is None else nan & valid).any(-1)
        score = _rank_scores(teacher, gold, valid, coef, k, window)
        return torch.where(nan_row, torch.nan, score)


def _rank_scores(teacher: Tensor, gold: Tensor, valid: Tensor | None, coef: CoefMode, k: int,
                 window: int) -> Tensor:
    with torch.no_grad():
        L = teacher.shape[-1]
        order = stable_rank_order(teacher, valid)
        if valid is None:
            valid = torch.ones_like(teacher, dtype=torch.bool)
        valid = valid.expand_as(teacher)
        kk = min(k, L)
        top = order[..., :kk]
        top_valid = valid.gather(-1, top)
        lo_off, n = (0, 1) if coef == "mrr" else (window, 2 * window)
        lo = gold.long()[..., None] - lo_off
        relevant = (top >= lo) & (top < lo + n) & top_valid  # [..., kk] relevance list in rank order
        ranks = torch.arange(1, kk + 1, device=teacher.device, dtype=torch.float64)
        if coef in ("map", "mrr"):
            first = torch.where(relevant, ranks, torch.inf).amin(dim=-1)
            return torch.where(torch.isfinite(first), 1.0 / first, 0.0)
        pos = torch.arange(L, device=teacher.device)
        in_window = (pos >= lo) & (pos < lo + n) & valid
        n_relevant = in_window.sum(-1)
        precision = relevant.cumsum(-1) / ranks
        ap_sum = torch.where(relevant, precision, 0.0).sum(-1)
        denom = torch.clamp(n_relevant, max=k).clamp(min=1)
        return torch.where(n_relevant > 0, ap_sum / denom, 0.0)


def span_kd_reference(
    student: Tensor | Sequence[Tensor],
    teacher: Tensor | Sequence[Tensor],
    gold: Tensor | Sequence[Tensor] | None = None,
    *,
    lengths: Tensor | None = None,
    mask: Tensor | None = None,
    options: SpanKDOptions | None = None,
    validate: bool | None = None,
    **option_kwargs,
) -> SpanKDOutput:
    """The span KD loss in plain PyTorch (autograd for the gradient). Same arguments and outputs as
    :func:`span_kd_loss`. Computes in fp64 for fp64 inputs and in fp32 otherwise."""
    opts = options if options is not None else SpanKDOptions(**option_kwargs)
    inp = _normalise(student, teacher, gold, lengths, mask, opts)
    _validate_values(inp, opts, validate)
    return _reference(inp, opts)


def _reference(inp: _Inputs, opts: SpanKDOptions) -> SpanKDOutput:
    """:func:`span_kd_reference` on normalised (and, if asked, validated) inputs."""
    cdt = torch.float64 if inp.s0.dtype == torch.float64 else torch.float32
    s = torch.stack((inp.s0, inp.s1), dim=1).to(cdt)  # [B, 2, L]
    t_raw = torch.stack((inp.t0, inp.t1), dim=1).detach()
    t = t_raw.to(cdt)
    valid = _valid_positions(inp)[:, None, :]  # [B, 1, L]
    n_valid = valid.sum(-1)  # [B, 1]
    T = float(opts.temperature)

    log_q = torch.log_softmax(torch.where(valid, s / T, _MASK_FILL), dim=-1)
    log_p = torch.log_softmax(torch.where(valid, t / T, _MASK_FILL), dim=-1)
    kl = torch.zeros(inp.B, 2, dtype=cdt, device=s.device)
    if opts.direction in ("forward", "symmetric"):
        kl = kl + torch.where(valid, log_p.exp() * (log_p - log_q), 0.0).sum(-1)
    if opts.direction in ("reverse", "symmetric"):
        kl = kl + torch.where(valid, log_q.exp() * (log_q - log_p), 0.0).sum(-1)
    kl = torch.where(n_valid > 0, kl * opts.t2_factor, torch.nan)

    ce = None
    if opts.has_ce:
        g = torch.stack((inp.gold0, inp.gold1), dim=1).long()  # [B, 2]
        g_in = (g >= 0) & (g < inp.L)
        g_safe = torch.where(g_in, g, 0)
        gold_ok = g_in & valid.expand(-1, 2, -1).gather(-1, g_safe[..., None])[..., 0]
        log_s = torch.log_softmax(torch.where(valid, s, _MASK_FILL), dim=-1)
        ce = -log_s.gather(-1, g_safe[..., None])[..., 0]
        ce = torch.where(gold_ok & (n_valid > 0), ce, torch.nan)

    N = 2 * inp.B
    if opts.ranked:
        g = torch.stack((inp.gold0, inp.gold1), dim=1)
        all_valid = inp.lengths is None and inp.mask is None  # skips the validity sort
        scores = rank_scores(t_raw, g, None if all_valid else valid, opts.coef, opts.k, opts.window).to(cdt)
        if opts.scope == "batch":
            coef = opts.alpha_kl * scores.mean()
            kd = coef * kl.mean()
        else:
            w = opts.alpha_kl * scores.mean(dim=1, keepdim=True)  # [B, 1]
            kd = (w * kl).sum() / N
            coef = w.mean()
    else:
        scores = None
        coef = torch.tensor(float(opts.alpha_kl), dtype=cdt, device=s.device)
        kd = opts.alpha_kl * kl.mean()
    loss = kd + opts.alpha_ce * ce.mean() if ce is not None else kd
    return SpanKDOutput(
        loss=loss,
        ce_rows=None if ce is None else ce.detach(),
        kl_rows=kl.detach(),
        coef_rows=scores,
        coef=coef.detach(),
    )


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _valid_at(
    rows,  # [R] int64 example indices
    pos,  # [R, C] or [1, C] int positions (may be < 0 or >= L: those are invalid)
    row_ok,  # [R] bool, rows < B
    row_len,  # [R] int valid lengths (HAS_LENGTHS only)
    L,
    mask_ptr,  # [B, L] uint8 validity mask (HAS_MASK only)
    stride_mb,
    stride_ml,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """[R, C] bool: position inside the softmax/ranking of its row."""
    ok = row_ok[:, None] & (pos >= 0) & (pos < L)
    if HAS_LENGTHS:
        ok = ok & (pos < row_len[:, None])
    if HAS_MASK:
        m = tl.load(mask_ptr + rows[:, None] * stride_mb + pos * stride_ml, mask=ok, other=0)
        ok = ok & (m != 0)
    return ok


@triton.jit
def _head_stats(
    s_ptr,  # [B, L] student logits of this head, strides (stride_sb, stride_sl)
    t_ptr,  # [B, L] teacher logits of this head, strides (stride_tb, stride_tl)
    stride_sb,
    stride_sl,
    stride_tb,
    stride_tl,
    rows,  # [R] int64
    row_ok,  # [R] bool
    row_len,  # [R] int
    mask_ptr,  # [B, L] uint8
    stride_mb,
    stride_ml,
    L,
    T,
    tgt_val,  # [R, NT] fp32 teacher logits of the ranking targets (RANKED)
    tgt_pos,  # [R, NT] int positions of the ranking targets
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_CE: tl.constexpr,
    NEED_FWD: tl.constexpr,
    NEED_REV: tl.constexpr,
    RANKED: tl.constexpr,
    NT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One pass over the rows: online (max, sum) for a = s/T, c = t/T and s, the centred KL sums
    and, per ranking target, the number of valid positions that precede it."""
    cols = tl.arange(0, BLOCK_L)
    nt = tl.arange(0, NT)
    ma = tl.full([ROWS], -1.0e30, tl.float32)  # running max of a
    mc = tl.full([ROWS], -1.0e30, tl.float32)  # running max of c
    ms = tl.full([ROWS], -1.0e30, tl.float32)  # running max of s (CE, T = 1)
    da = tl.zeros([ROWS], tl.float32)  # Σ e^{a - ma}
    dc = tl.zeros([ROWS], tl.float32)  # Σ e^{c - mc}
    ds = tl.zeros([ROWS], tl.float32)  # Σ e^{s - ms}
    u = tl.zeros([ROWS], tl.float32)  # Σ e^{c - mc} ((c - mc) - (a - ma))   -> KL_fwd
    v = tl.zeros([ROWS], tl.float32)  # Σ e^{a - ma} ((a - ma) - (c - mc))   -> KL_rev
    n_valid = tl.zeros([ROWS], tl.int32)
    nan_s = tl.zeros([ROWS], tl.int32)  # NaN count at valid positions: the explicit NaN flags
    nan_t = tl.zeros([ROWS], tl.int32)
    cnt = tl.zeros([ROWS, NT], tl.int32)  # valid positions ranked before each target
    for start in range(0, L, BLOCK_L):
        pos = start + cols[None, :]  # [1, BLOCK_L]
        valid = _valid_at(rows, pos, row_ok, row_len, L, mask_ptr, stride_mb, stride_ml, HAS_LENGTHS, HAS_MASK)
        xs = tl.load(s_ptr + rows[:, None] * stride_sb + pos * stride_sl, mask=valid, other=0.0).to(tl.float32)
        xt = tl.load(t_ptr + rows[:, None] * stride_tb + pos * stride_tl, mask=valid, other=0.0).to(tl.float32)
        n_valid += tl.sum(valid.to(tl.int32), axis=1)
        # x != x is IEEE's NaN test, defined on every backend; max/min are not (compiled tl.max drops NaN).
        nan_s += tl.sum((valid & (xs != xs)).to(tl.int32), axis=1)
        nan_t += tl.sum((valid & (xt != xt)).to(tl.int32), axis=1)
        a = tl.where(valid, xs / T, -1.0e30)
        c = tl.where(valid, xt / T, -1.0e30)
        ma_new = tl.maximum(ma, tl.max(a, axis=1))
        mc_new = tl.maximum(mc, tl.max(c, axis=1))
        ea = tl.where(valid, tl.exp(a - ma_new[:, None]), 0.0)
        ec = tl.where(valid, tl.exp(c - mc_new[:, None]), 0.0)
        # Centred log-ratios on the new maxima; old sums are re-centred: when (ma, mc) move to
        # (ma', mc'), every old term gains (ma' - ma) - (mc' - mc) and is scaled by e^{mc - mc'}.
        centred = (c - mc_new[:, None]) - (a - ma_new[:, None])  # log p - log q up to row constants
        if NEED_FWD:
            u = tl.exp(mc - mc_new) * (u + dc * ((ma_new - ma) - (mc_new - mc))) + tl.sum(ec * centred, axis=1)
        if NEED_REV:
            v = tl.exp(ma - ma_new) * (v + da * ((mc_new - mc) - (ma_new - ma))) - tl.sum(ea * centred, axis=1)
        da = da * tl.exp(ma - ma_new) + tl.sum(ea, axis=1)
        dc = dc * tl.exp(mc - mc_new) + tl.sum(ec, axis=1)
        ma = ma_new
        mc = mc_new
        if HAS_CE:
            s1 = tl.where(valid, xs, -1.0e30)
            ms_new = tl.maximum(ms, tl.max(s1, axis=1))
            ds = ds * tl.exp(ms - ms_new) + tl.sum(tl.where(valid, tl.exp(s1 - ms_new[:, None]), 0.0), axis=1)
            ms = ms_new
        if RANKED:
            # rank(j) - 1 = #{i valid : t_i > t_j or (t_i == t_j and i < j)}: no sort needed.
            for d in range(NT):
                sel = nt[None, :] == d
                tv = tl.max(tl.where(sel, tgt_val, -float("inf")), axis=1)
                tp = tl.max(tl.where(sel, tgt_pos, -1), axis=1)
                before = valid & ((xt > tv[:, None]) | ((xt == tv[:, None]) & (pos < tp[:, None])))
                cnt += tl.where(sel, tl.sum(before.to(tl.int32), axis=1)[:, None], 0)
    return ma, da, mc, dc, u, v, ms, ds, n_valid, nan_s, nan_t, cnt


@triton.jit
def _head_values(
    s_ptr,  # [B, L] student logits of this head
    stride_sb,
    stride_sl,
    rows,
    gold,  # [R] int gold positions
    gold_ok,  # [R] bool: gold inside [0, L) and valid
    ma,
    da,
    mc,
    dc,
    u,
    v,
    ms,
    ds,
    n_valid,
    nan_s,  # [R] NaN count of the student row (valid positions)
    nan_t,  # [R] NaN count of the teacher row
    T2F,
    DIRECTION: tl.constexpr,
    HAS_CE: tl.constexpr,
):
    """Per-row KL (× T2F), CE and the log-normalisers the gradient pass needs. NaN rows are set to
    NaN here explicitly: KL if either side has a NaN, CE if the student has one."""
    has = n_valid > 0
    da1 = tl.where(has, da, 1.0)  # rows with no valid position become NaN below, without 0/0
    dc1 = tl.where(has, dc, 1.0)
    lda = tl.log(da1)
    ldc = tl.log(dc1)
    # KL_fwd = Σ p (log p - log q) = u/dc - log dc + log da (centred factored form)
    fkl = u / dc1 - ldc + lda
    rkl = v / da1 - lda + ldc
    if DIRECTION == 0:
        kl = fkl
    elif DIRECTION == 1:
        kl = rkl
    else:
        kl = fkl + rkl
    kl = tl.where(has & (nan_s + nan_t == 0), kl * T2F, float("nan"))
    ce = tl.zeros_like(kl)
    lds = tl.zeros_like(kl)
    if HAS_CE:
        ds1 = tl.where(has, ds, 1.0)
        lds = tl.log(ds1)
        s_g = tl.load(s_ptr + rows * stride_sb + gold * stride_sl, mask=gold_ok, other=0.0).to(tl.float32)
        ce = tl.where(gold_ok & has & (nan_s == 0), (ms - s_g) + lds, float("nan"))  # CE = lse(s) - s_g
    return kl, rkl, ce, lda, ldc, lds


@triton.jit
def _head_grad(
    s_ptr,  # [B, L] student logits of this head, strides (stride_sb, stride_sl)
    t_ptr,  # [B, L] teacher logits of this head, strides (stride_tb, stride_tl)
    g_ptr,  # [B, L] out: dS (student dtype), or the fp32 CE part when SPLIT; strides (stride_gb, stride_gl)
    k_ptr,  # [B, L] out: fp32 KL part of dS, contiguous (SPLIT only)
    stride_sb,
    stride_sl,
    stride_tb,
    stride_tl,
    stride_gb,
    stride_gl,
    rows,
    row_ok,
    row_len,
    mask_ptr,
    stride_mb,
    stride_ml,
    L,
    T,
    gold,  # [R] int
    ma,
    lda,
    mc,
    ldc,
    rkl,  # [R] unscaled KL_rev (REV)
    ms,
    lds,
    ce_w,  # [R] weight of dCE (alpha_ce / N, NaN for an invalid gold)
    kl_w,  # [R] weight of dKL/da (F/T · w / N)
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_CE: tl.constexpr,
    NEED_FWD: tl.constexpr,
    NEED_REV: tl.constexpr,
    SPLIT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Second sweep: dS = ce_w (softmax(s) - onehot(g)) + kl_w dKL/da, zero at masked positions.

    dKL_fwd/da = q - p;  dKL_rev/da = q (log q - log p - KL_rev)  (a = s/T, so d/ds = d/da / T).
    """
    cols = tl.arange(0, BLOCK_L)
    for start in range(0, L, BLOCK_L):
        pos = start + cols[None, :]
        inb = row_ok[:, None] & (pos < L)
        valid = _valid_at(rows, pos, row_ok, row_len, L, mask_ptr, stride_mb, stride_ml, HAS_LENGTHS, HAS_MASK)
        xs = tl.load(s_ptr + rows[:, None] * stride_sb + pos * stride_sl, mask=valid, other=0.0).to(tl.float32)
        xt = tl.load(t_ptr + rows[:, None] * stride_tb + pos * stride_tl, mask=valid, other=0.0).to(tl.float32)
        # Masked lanes get -1e30 so that exp() gives 0 there (padding rows have ma = -1e30).
        log_q = tl.where(valid, xs / T - ma[:, None] - lda[:, None], -1.0e30)
        log_p = tl.where(valid, xt / T - mc[:, None] - ldc[:, None], -1.0e30)
        q = tl.exp(log_q)
        dkl = tl.zeros_like(q)
        if NEED_FWD:
            dkl += q - tl.exp(log_p)  # fp32, rounded once at the store
        if NEED_REV:
            dkl += q * ((log_q - log_p) - rkl[:, None])
        gkl = tl.where(valid, kl_w[:, None] * dkl, 0.0)
        gce = tl.zeros_like(gkl)
        if HAS_CE:
            p_s = tl.exp(tl.where(valid, xs - ms[:, None] - lds[:, None], -1.0e30))
            onehot = tl.where(pos == gold[:, None], 1.0, 0.0)
            gce = tl.where(valid, ce_w[:, None] * (p_s - onehot), 0.0)
        g_off = rows[:, None] * stride_gb + pos * stride_gl
        if SPLIT:
            tl.store(k_ptr + rows[:, None] * L + pos, gkl, mask=inb)
            if HAS_CE:
                tl.store(g_ptr + g_off, gce, mask=inb)
        else:
            tl.store(g_ptr + g_off, (gkl + gce).to(g_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _window_targets(
    t_ptr,  # [B, L] teacher logits of this head
    stride_tb,
    stride_tl,
    rows,
    row_ok,
    row_len,
    mask_ptr,
    stride_mb,
    stride_ml,
    L,
    gold,  # [R] int
    win_lo,  # window = [gold - win_lo, gold - win_lo + win_len)
    win_len,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    WBLOCK: tl.constexpr,
):
    """The relevant window of each row: positions [R, WBLOCK], relevance, teacher logits (-inf off)."""
    d = tl.arange(0, WBLOCK)
    pos = (gold - win_lo)[:, None] + d[None, :]
    rel = _valid_at(rows, pos, row_ok, row_len, L, mask_ptr, stride_mb, stride_ml, HAS_LENGTHS, HAS_MASK)
    rel = rel & (d[None, :] < win_len)
    tv = tl.load(t_ptr + rows[:, None] * stride_tb + pos * stride_tl, mask=rel, other=0.0).to(tl.float32)
    tv = tl.where(rel, tv, -float("inf"))
    return pos, rel, tv


@triton.jit
def _first_hit_target(pos, rel, tv, L):
    """Best relevant position j* (largest logit, lowest index): the first relevant one in rank order."""
    m_rel = tl.max(tv, axis=1)
    j_star = tl.min(tl.where(rel & (tv == m_rel[:, None]), pos, L), axis=1)
    return m_rel[:, None], j_star[:, None]


@triton.jit
def _score(cnt, pos, rel, tv, topk, COEF_MODE: tl.constexpr, NT: tl.constexpr):
    """Rank score of each row from the counts of positions ranked before each target."""
    n_rel = tl.sum(rel.to(tl.int32), axis=1)
    if COEF_MODE == 1:  # first hit (map: window, mrr: gold only): 1/rank if rank <= k
        rank = tl.sum(cnt, axis=1) + 1
        score = tl.where((n_rel > 0) & (rank <= topk), 1.0 / rank.to(tl.float32), 0.0)
    else:  # textbook AP@k: Σ_{relevant j, rank(j) <= k} (#relevant ranked <= j) / rank(j) / min(k, |R|)
        nt = tl.arange(0, NT)
        ap = tl.zeros([cnt.shape[0]], tl.float32)
        for d in range(NT):
            sel = nt[None, :] == d
            tv_d = tl.max(tl.where(sel, tv, -float("inf")), axis=1)
            pos_d = tl.max(tl.where(sel, pos, -1), axis=1)
            rel_d = tl.max(tl.where(sel, rel.to(tl.int32), 0), axis=1) > 0
            rank = tl.max(tl.where(sel, cnt, 0), axis=1) + 1
            rel_before = tl.sum(
                (rel & ((tv > tv_d[:, None]) | ((tv == tv_d[:, None]) & (pos < pos_d[:, None])))).to(tl.int32),
                axis=1,
            )
            hit = rel_d & (rank <= topk)
            ap += tl.where(hit, (rel_before + 1).to(tl.float32) / rank.to(tl.float32), 0.0)
        denom = tl.maximum(tl.minimum(n_rel, topk), 1).to(tl.float32)
        score = tl.where(n_rel > 0, ap / denom, 0.0)
    return score


@triton.jit
def _publish_heads(
    out_ptr,  # [B, 2] fp32 per-head values, written through an int32 view
    rows,  # [R] int64 example indices
    row_ok,  # [R] bool, rows < B
    v0,  # [R] fp32 start-head values
    v1,  # [R] fp32 end-head values
):
    """Release stores (int32 bit patterns: the interpreter has no fp32 xchg) make the row values
    visible GPU-wide before this program takes its ticket."""
    tl.atomic_xchg(out_ptr + rows * 2, v0.to(tl.int32, bitcast=True), mask=row_ok, sem="release")
    tl.atomic_xchg(out_ptr + rows * 2 + 1, v1.to(tl.int32, bitcast=True), mask=row_ok, sem="release")


@triton.jit
def _collect_heads(
    in_ptr,  # [B, 2] per-head values written by _publish_heads (int32 view)
    ex,  # [BLOCK_R] example indices
    ok,  # [BLOCK_R] bool, ex < B
):
    """(start, end) fp32 values of the examples ``ex`` (0 where not ok); .cg skips the (stale-able) L1."""
    v0 = tl.load(in_ptr + ex * 2, mask=ok, other=0, cache_modifier=".cg").to(tl.float32, bitcast=True)
    v1 = tl.load(in_ptr + ex * 2 + 1, mask=ok, other=0, cache_modifier=".cg").to(tl.float32, bitcast=True)
    return v0, v1


@triton.jit
def _span_kd_fwd_kernel(
    s0_ptr,  # [B, L] student start logits (fp32/fp16/bf16), strides (stride_sb, stride_sl)
    s1_ptr,  # [B, L] student end logits, same strides
    t0_ptr,  # [B, L] teacher start logits, strides (stride_tb, stride_tl)
    t1_ptr,  # [B, L] teacher end logits, same strides
    gold0_ptr,  # [B] int gold start positions, stride stride_g0 (NEEDS_GOLD)
    gold1_ptr,  # [B] int gold end positions, stride stride_g1
    len_ptr,  # [B] int valid lengths, stride stride_len (HAS_LENGTHS)
    mask_ptr,  # [B, L] uint8 validity mask, strides (stride_mb, stride_ml) (HAS_MASK)
    g0_ptr,  # [B, L] out dS start: student dtype, or fp32 CE part (SPLIT); strides (stride_gb, stride_gl)
    g1_ptr,  # [B, L] out dS end
    k0_ptr,  # [B, L] out fp32 KL part of dS start, contiguous (SPLIT)
    k1_ptr,  # [B, L] out fp32 KL part of dS end
    ce_ptr,  # [B, 2] out per-head CE, fp32 stored through an int32 view (release stores)
    kl_ptr,  # [B, 2] out per-head KL (× T2F), same
    score_ptr,  # [B, 2] out per-head rank score, same (RANKED)
    loss_ptr,  # [1] out fp32 loss
    coef_ptr,  # [1] out fp32 applied KD weight
    counter_ptr,  # [1] int32 ticket counter; 0 before the launch, reset to 0 by the last program
    B,
    L,
    T,
    T2F,
    alpha_ce,
    alpha_kl,
    topk,
    win_lo,
    win_len,
    stride_sb,
    stride_sl,
    stride_tb,
    stride_tl,
    stride_g0,
    stride_g1,
    stride_len,
    stride_mb,
    stride_ml,
    stride_gb,
    stride_gl,
    DIRECTION: tl.constexpr,  # 0 forward, 1 reverse, 2 symmetric
    HAS_CE: tl.constexpr,
    COEF_MODE: tl.constexpr,  # 0 constant, 1 first hit (map/mrr), 2 AP@k
    SCOPE_EXAMPLE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SPLIT: tl.constexpr,  # ranked batch coefficient: dS_ce and dS_kl kept apart for the backward
    ROWS: tl.constexpr,  # examples per program (each has 2 heads)
    BLOCK_L: tl.constexpr,
    WBLOCK: tl.constexpr,  # next_pow2(win_len)
    BLOCK_R: tl.constexpr,  # examples per step of the final reduction
):
    NEED_FWD: tl.constexpr = DIRECTION != 1
    NEED_REV: tl.constexpr = DIRECTION != 0
    RANKED: tl.constexpr = COEF_MODE != 0
    NT: tl.constexpr = WBLOCK if COEF_MODE == 2 else 1  # ranking targets per row
    # int64 so that rows * stride cannot overflow int32 (triton issue #1058, as in Liger)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)  # [ROWS]
    row_ok = rows < B
    row_len = tl.zeros([ROWS], tl.int32)
    if HAS_LENGTHS:
        row_len = tl.load(len_ptr + rows * stride_len, mask=row_ok, other=0).to(tl.int32)
    gold0 = tl.zeros([ROWS], tl.int64)
    gold1 = tl.zeros([ROWS], tl.int64)
    if HAS_CE or RANKED:
        gold0 = tl.load(gold0_ptr + rows * stride_g0, mask=row_ok, other=0).to(tl.int64)
        gold1 = tl.load(gold1_ptr + rows * stride_g1, mask=row_ok, other=0).to(tl.int64)

    # ---- ranking targets: j* (first hit) or the whole window (AP) --------------------------------
    tgt_v0 = tl.zeros([ROWS, NT], tl.float32)
    tgt_p0 = tl.zeros([ROWS, NT], tl.int64)
    tgt_v1 = tl.zeros([ROWS, NT], tl.float32)
    tgt_p1 = tl.zeros([ROWS, NT], tl.int64)
    wpos0 = tl.zeros([ROWS, WBLOCK], tl.int64)
    wpos1 = tl.zeros([ROWS, WBLOCK], tl.int64)
    wrel0 = wpos0 > 0
    wrel1 = wpos1 > 0
    wtv0 = tl.zeros([ROWS, WBLOCK], tl.float32)
    wtv1 = tl.zeros([ROWS, WBLOCK], tl.float32)
    if RANKED:
        wpos0, wrel0, wtv0 = _window_targets(t0_ptr, stride_tb, stride_tl, rows, row_ok, row_len, mask_ptr,
                                             stride_mb, stride_ml, L, gold0, win_lo, win_len,
                                             HAS_LENGTHS, HAS_MASK, WBLOCK)
        wpos1, wrel1, wtv1 = _window_targets(t1_ptr, stride_tb, stride_tl, rows, row_ok, row_len, mask_ptr,
                                             stride_mb, stride_ml, L, gold1, win_lo, win_len,
                                             HAS_LENGTHS, HAS_MASK, WBLOCK)
        if COEF_MODE == 1:
            tgt_v0, tgt_p0 = _first_hit_target(wpos0, wrel0, wtv0, L)
            tgt_v1, tgt_p1 = _first_hit_target(wpos1, wrel1, wtv1, L)
        else:
            tgt_v0, tgt_p0, tgt_v1, tgt_p1 = wtv0, wpos0, wtv1, wpos1

    # ---- pass 1: row statistics (one read of s and t) --------------------------------------------
    ma0, da0, mc0, dc0, u0, v0, ms0, ds0, nv0, ns0, nt0, cnt0 = _head_stats(
        s0_ptr, t0_ptr, stride_sb, stride_sl, stride_tb, stride_tl, rows, row_ok, row_len, mask_ptr,
        stride_mb, stride_ml, L, T, tgt_v0, tgt_p0,
        HAS_LENGTHS, HAS_MASK, HAS_CE, NEED_FWD, NEED_REV, RANKED, NT, ROWS, BLOCK_L)
    ma1, da1, mc1, dc1, u1, v1, ms1, ds1, nv1, ns1, nt1, cnt1 = _head_stats(
        s1_ptr, t1_ptr, stride_sb, stride_sl, stride_tb, stride_tl, rows, row_ok, row_len, mask_ptr,
        stride_mb, stride_ml, L, T, tgt_v1, tgt_p1,
        HAS_LENGTHS, HAS_MASK, HAS_CE, NEED_FWD, NEED_REV, RANKED, NT, ROWS, BLOCK_L)

    gold_ok0 = tl.max(_valid_at(rows, gold0[:, None], row_ok, row_len, L, mask_ptr, stride_mb, stride_ml,
                                HAS_LENGTHS, HAS_MASK).to(tl.int32), axis=1) > 0
    gold_ok1 = tl.max(_valid_at(rows, gold1[:, None], row_ok, row_len, L, mask_ptr, stride_mb, stride_ml,
                                HAS_LENGTHS, HAS_MASK).to(tl.int32), axis=1) > 0
    kl0, rkl0, ce0, lda0, ldc0, lds0 = _head_values(s0_ptr, stride_sb, stride_sl, rows, gold0, gold_ok0,
                                                    ma0, da0, mc0, dc0, u0, v0, ms0, ds0, nv0, ns0, nt0, T2F,
                                                    DIRECTION, HAS_CE)
    kl1, rkl1, ce1, lda1, ldc1, lds1 = _head_values(s1_ptr, stride_sb, stride_sl, rows, gold1, gold_ok1,
                                                    ma1, da1, mc1, dc1, u1, v1, ms1, ds1, nv1, ns1, nt1, T2F,
                                                    DIRECTION, HAS_CE)
    score0 = tl.zeros([ROWS], tl.float32)
    score1 = tl.zeros([ROWS], tl.float32)
    if RANKED:
        # A NaN teacher logit leaves the ranking undefined: the row's score is NaN.
        score0 = tl.where(nt0 == 0, _score(cnt0, wpos0, wrel0, wtv0, topk, COEF_MODE, NT), float("nan"))
        score1 = tl.where(nt1 == 0, _score(cnt1, wpos1, wrel1, wtv1, topk, COEF_MODE, NT), float("nan"))

    # ---- pass 2: dS into its own buffer ----------------------------------------------------------
    if COMPUTE_GRAD:
        inv_n = 0.5 / B  # 1/N, N = 2B rows (B may be specialised to the constant 1)
        # KD weight of each row: constant, per example, or 1 (SPLIT: the batch coefficient is
        # applied by the backward kernel, once every row has been seen).
        w = tl.full([ROWS], 1.0, tl.float32)
        if COEF_MODE == 0:
            w = w * alpha_kl
        elif SCOPE_EXAMPLE:
            w = alpha_kl * 0.5 * (score0 + score1)
        kl_w = w * (T2F / T) * inv_n  # d(F·KL)/ds = (F/T) dKL/da
        # NaN weights make every valid position of a NaN row NaN, whatever exp/max did with the NaN.
        kl_w0 = tl.where(ns0 + nt0 == 0, kl_w, float("nan"))
        kl_w1 = tl.where(ns1 + nt1 == 0, kl_w, float("nan"))
        ce_w0 = tl.where(gold_ok0 & (ns0 == 0), alpha_ce * inv_n, float("nan"))
        ce_w1 = tl.where(gold_ok1 & (ns1 == 0), alpha_ce * inv_n, float("nan"))
        _head_grad(s0_ptr, t0_ptr, g0_ptr, k0_ptr, stride_sb, stride_sl, stride_tb, stride_tl, stride_gb,
                   stride_gl, rows, row_ok, row_len, mask_ptr, stride_mb, stride_ml, L, T, gold0,
                   ma0, lda0, mc0, ldc0, rkl0, ms0, lds0, ce_w0, kl_w0,
                   HAS_LENGTHS, HAS_MASK, HAS_CE, NEED_FWD, NEED_REV, SPLIT, ROWS, BLOCK_L)
        _head_grad(s1_ptr, t1_ptr, g1_ptr, k1_ptr, stride_sb, stride_sl, stride_tb, stride_tl, stride_gb,
                   stride_gl, rows, row_ok, row_len, mask_ptr, stride_mb, stride_ml, L, T, gold1,
                   ma1, lda1, mc1, ldc1, rkl1, ms1, lds1, ce_w1, kl_w1,
                   HAS_LENGTHS, HAS_MASK, HAS_CE, NEED_FWD, NEED_REV, SPLIT, ROWS, BLOCK_L)

    # ---- per-row outputs, then the last program reduces them into the loss -----------------------
    _publish_heads(kl_ptr, rows, row_ok, kl0, kl1)
    if HAS_CE:
        _publish_heads(ce_ptr, rows, row_ok, ce0, ce1)
    if RANKED:
        _publish_heads(score_ptr, rows, row_ok, score0, score1)
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:
        # Deterministic (fixed-order) reduction over all rows.
        acc_ce = tl.zeros([BLOCK_R], tl.float32)
        acc_kl = tl.zeros([BLOCK_R], tl.float32)
        acc_sc = tl.zeros([BLOCK_R], tl.float32)
        acc_wkl = tl.zeros([BLOCK_R], tl.float32)
        for start in range(0, B, BLOCK_R):
            ex = start + tl.arange(0, BLOCK_R)
            ok = ex < B
            k_a, k_b = _collect_heads(kl_ptr, ex, ok)
            acc_kl += k_a + k_b
            if HAS_CE:
                c_a, c_b = _collect_heads(ce_ptr, ex, ok)
                acc_ce += c_a + c_b
            if RANKED:
                r_a, r_b = _collect_heads(score_ptr, ex, ok)
                acc_sc += r_a + r_b
                acc_wkl += 0.5 * (r_a + r_b) * (k_a + k_b)
        inv_n = 0.5 / B  # 1/N, N = 2B rows (B may be specialised to the constant 1)
        kl_mean = tl.sum(acc_kl, axis=0) * inv_n
        if COEF_MODE == 0:
            coef = alpha_kl  # never NaN, even when a KL row is
            kd = alpha_kl * kl_mean
        elif SCOPE_EXAMPLE:
            coef = alpha_kl * tl.sum(acc_sc, axis=0) * inv_n
            kd = alpha_kl * tl.sum(acc_wkl, axis=0) * inv_n
        else:
            coef = alpha_kl * tl.sum(acc_sc, axis=0) * inv_n
            kd = coef * kl_mean
        loss = kd
        if HAS_CE:
            loss = loss + alpha_ce * (tl.sum(acc_ce, axis=0) * inv_n)
        tl.store(loss_ptr, loss)
        tl.store(coef_ptr, coef)
        tl.store(counter_ptr, 0)  # ready for the next launch on this stream


@triton.jit
def _span_kd_bwd_kernel(
    o0_ptr,  # [B, L] out: new dS start, student dtype, strides (stride_ob, stride_ol)
    o1_ptr,  # [B, L] out: new dS end
    a0_ptr,  # [B, L] forward dS start (student dtype) or fp32 CE part (SPLIT), strides (stride_ab, stride_al)
    a1_ptr,  # [B, L] forward dS end
    k0_ptr,  # [B, L] fp32 KL part start, contiguous (SPLIT)
    k1_ptr,  # [B, L] fp32 KL part end
    go_ptr,  # [] grad_output of the loss
    coef_ptr,  # [1] fp32 batch coefficient (SPLIT)
    B,
    L,
    stride_ob,
    stride_ol,
    stride_ab,
    stride_al,
    HAS_A: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dS = grad_output · A (fused), or grad_output · (A_ce + coef · K_kl) (SPLIT), both heads."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # flat index over [B, L]
    ok = offs < B * L
    b = offs // L
    col = offs % L
    scale = tl.load(go_ptr).to(tl.float32)
    a_off = b * stride_ab + col * stride_al
    o_off = b * stride_ob + col * stride_ol
    x0 = tl.zeros([BLOCK], tl.float32)
    x1 = tl.zeros([BLOCK], tl.float32)
    if HAS_A:
        x0 = tl.load(a0_ptr + a_off, mask=ok, other=0.0).to(tl.float32)
        x1 = tl.load(a1_ptr + a_off, mask=ok, other=0.0).to(tl.float32)
    if SPLIT:
        coef = tl.load(coef_ptr)
        x0 += coef * tl.load(k0_ptr + offs, mask=ok, other=0.0)
        x1 += coef * tl.load(k1_ptr + offs, mask=ok, other=0.0)
    tl.store(o0_ptr + o_off, (scale * x0).to(o0_ptr.dtype.element_ty), mask=ok)
    tl.store(o1_ptr + o_off, (scale * x1).to(o1_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------

_TICKETS: dict[tuple[str, int], Tensor] = {}
_MAX_BLOCK_L = 4096  # columns per tile step; longer rows loop (online statistics)
_GPU_TILE = 1024  # elements per [ROWS, BLOCK_L] tile on GPU: <= 128 registers/thread at 4 warps (ptxas, sm_90)
_INTERPRET_TILE = 16384  # the interpreter pays per program, not per element: fewer, bigger tiles


def _interpreting() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (the env var is read by
    ``triton.jit`` when this module is imported, so setting it later has no effect)."""
    return type(_span_kd_fwd_kernel).__name__ == "InterpretedFunction"


def _ticket_counter(device: torch.device) -> Tensor:
    """The per-(device, stream) int32 counter the forward kernel's last program resets to 0."""
    if device.type == "cuda":
        key = (str(device), torch.cuda.current_stream(device).cuda_stream)
    else:
        key = (str(device), 0)
    counter = _TICKETS.get(key)
    if counter is None:
        counter = _TICKETS[key] = torch.zeros(1, dtype=torch.int32, device=device)
    elif device.type != "cuda":
        counter.zero_()  # CPU/interpreter: free, and recovers from a kernel that raised mid-way
    return counter


def _tile_shape(B: int, L: int, device: torch.device, rows_per_program: int | None) -> tuple[int, int]:
    block_l = min(triton.next_power_of_2(L), _MAX_BLOCK_L)
    if rows_per_program is not None:
        if rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
            raise ValueError(f"span_kd: rows_per_program must be a power of two >= 1; got {rows_per_program}")
        return rows_per_program, block_l
    if device.type == "cuda":
        # Several examples per program for short rows, but keep about one program per SM busy.
        n_sm = torch.cuda.get_device_properties(device).multi_processor_count
        rows = min(max(_GPU_TILE // block_l, 1), triton.next_power_of_2(triton.cdiv(B, n_sm)))
    else:
        rows = min(max(_INTERPRET_TILE // block_l, 1), triton.next_power_of_2(B))
    return max(rows, 1), block_l


def _check_triton_usable(inp: _Inputs) -> None:
    if not HAS_TRITON:
        raise RuntimeError("span_kd: backend='triton' needs the triton package")
    if not inp.s0.is_cuda and not _interpreting():
        raise RuntimeError("span_kd: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "kernels.span_kd is imported (or use backend='torch')")
    for name, x in (("student", inp.s0), ("teacher", inp.t0)):
        if x.dtype not in _KERNEL_DTYPES:
            raise ValueError(f"span_kd: the Triton kernel takes fp32/fp16/bf16 {name} logits; got {x.dtype} "
                             "(use backend='torch' for float64)")


def _same_strides(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """The kernel shares one (row, col) stride pair between the two heads of a tensor."""
    if x0.stride() == x1.stride():
        return x0, x1
    return x0.contiguous(), x1.contiguous()


@dataclass
class _GradBuffers:
    """dS storage. Fused: g0/g1 hold dS in the student dtype (views of ``full`` for a [B, 2, L]
    student, laid out like it so autograd can adopt it without a copy). SPLIT: g0/g1 hold the fp32
    CE part (None without CE), k0/k1 the fp32 KL part; the backward combines them."""

    full: Tensor | None = None
    g0: Tensor | None = None
    g1: Tensor | None = None
    k0: Tensor | None = None
    k1: Tensor | None = None


def _alloc_student_grad(inp: _Inputs, dtype: torch.dtype) -> tuple[Tensor | None, Tensor, Tensor]:
    if inp.student_3d is not None:
        full = torch.empty_like(inp.student_3d, dtype=dtype)  # keeps a dense student's strides
        return full, full[:, 0], full[:, 1]
    g0 = torch.empty(inp.B, inp.L, dtype=dtype, device=inp.s0.device)
    return None, g0, torch.empty_like(g0)


def _span_kd_forward(inp: _Inputs, opts: SpanKDOptions, compute_grad: bool, rows_per_program: int | None):
    """Launch the forward kernel (one launch). Returns (loss, ce_rows, kl_rows, score_rows, coef,
    _GradBuffers | None); ce_rows/score_rows are None when not computed."""
    B, L = inp.B, inp.L
    device = inp.s0.device
    s0, s1 = _same_strides(inp.s0, inp.s1)
    t0, t1 = _same_strides(inp.t0, inp.t1)
    split = compute_grad and opts.ranked and opts.scope == "batch"
    f32 = dict(dtype=torch.float32, device=device)
    ce_rows = torch.empty(B, 2, **f32)
    kl_rows = torch.empty(B, 2, **f32)
    score_rows = torch.empty(B, 2, **f32)
    loss = torch.empty((), **f32)
    coef = torch.empty((), **f32)
    dummy = kl_rows  # pointer for disabled features; never dereferenced

    bufs = None
    if compute_grad:
        bufs = _GradBuffers()
        if split:
            bufs.k0, bufs.k1 = torch.empty(B, L, **f32), torch.empty(B, L, **f32)
            if opts.has_ce:
                bufs.g0, bufs.g1 = torch.empty(B, L, **f32), torch.empty(B, L, **f32)
        else:
            bufs.full, bufs.g0, bufs.g1 = _alloc_student_grad(inp, inp.s0.dtype)
    g0 = bufs.g0 if bufs is not None and bufs.g0 is not None else dummy
    g1 = bufs.g1 if bufs is not None and bufs.g1 is not None else dummy
    k0 = bufs.k0 if bufs is not None and bufs.k0 is not None else dummy
    k1 = bufs.k1 if bufs is not None and bufs.k1 is not None else dummy

    gold0 = inp.gold0 if inp.gold0 is not None else dummy
    gold1 = inp.gold1 if inp.gold1 is not None else dummy
    lengths = inp.lengths if inp.lengths is not None else dummy
    mask = inp.mask if inp.mask is not None else dummy
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # same bytes; uint8 loads are portable
    win_lo, win_len = opts.window_bounds()
    rows, block_l = _tile_shape(B, L, device, rows_per_program)
    _span_kd_fwd_kernel[(triton.cdiv(B, rows),)](
        s0, s1, t0, t1, gold0, gold1, lengths, mask, g0, g1, k0, k1,
        ce_rows.view(torch.int32), kl_rows.view(torch.int32), score_rows.view(torch.int32),
        loss, coef, _ticket_counter(device),
        B, L, float(opts.temperature), opts.t2_factor, float(opts.alpha_ce), float(opts.alpha_kl),
        opts.k, win_lo, win_len,
        s0.stride(0), s0.stride(1), t0.stride(0), t0.stride(1),
        gold0.stride(0), gold1.stride(0), lengths.stride(0), mask.stride(0), mask.stride(-1),
        g0.stride(0), g0.stride(-1),
        DIRECTION=_DIRECTIONS[opts.direction], HAS_CE=opts.has_ce, COEF_MODE=_COEF_MODES[opts.coef],
        SCOPE_EXAMPLE=opts.scope == "example", HAS_LENGTHS=inp.lengths is not None,
        HAS_MASK=inp.mask is not None, COMPUTE_GRAD=compute_grad, SPLIT=split,
        ROWS=rows, BLOCK_L=block_l, WBLOCK=triton.next_power_of_2(win_len),
        BLOCK_R=min(triton.next_power_of_2(B), 1024), num_warps=4 if rows * block_l <= _GPU_TILE else 8,
    )
    return (loss, ce_rows if opts.has_ce else None, kl_rows, score_rows if opts.ranked else None, coef, bufs)


@dataclass(frozen=True)
class _GradMeta:
    """What the backward needs to allocate dS like the student (kept instead of the student itself)."""

    B: int
    L: int
    dtype: torch.dtype
    layout: tuple[tuple[int, ...], tuple[int, ...]] | None  # (size, stride) of a [B, 2, L] student grad


def _span_kd_backward(grad_output: Tensor, bufs: _GradBuffers, coef: Tensor, meta: _GradMeta) -> _GradBuffers:
    """One launch: fresh dS = grad_output · dS (fused) or grad_output · (dS_ce + coef · dS_kl) (SPLIT)."""
    B, L = meta.B, meta.L
    split = bufs.k0 is not None
    if meta.layout is not None:
        full = torch.empty_strided(*meta.layout, dtype=meta.dtype, device=coef.device)
        o0, o1 = full[:, 0], full[:, 1]
    else:
        full = None
        o0 = torch.empty(B, L, dtype=meta.dtype, device=coef.device)
        o1 = torch.empty_like(o0)
    has_a = bufs.g0 is not None
    a0 = bufs.g0 if has_a else bufs.k0
    a1 = bufs.g1 if has_a else bufs.k1
    k0 = bufs.k0 if split else a0
    k1 = bufs.k1 if split else a1
    block = 4096 if o0.is_cuda else 16384
    _span_kd_bwd_kernel[(triton.cdiv(B * L, block),)](
        o0, o1, a0, a1, k0, k1, grad_output, coef, B, L,
        o0.stride(0), o0.stride(1), a0.stride(0), a0.stride(1),
        HAS_A=has_a, SPLIT=split, BLOCK=block, num_warps=4,
    )
    return _GradBuffers(full=full, g0=o0, g1=o1)


class SpanKDFunction(torch.autograd.Function):
    """Fused span KD loss; the gradient w.r.t. the student is computed in the forward pass.

    loss = alpha_ce · mean_{b,h} CE(s_bh, g_bh) + KD, KD = mean_{b,h} w_bh · F · KL(t_bh/T, s_bh/T),
    F = T² (or 1), w = alpha_kl (constant), alpha_kl · batch-mean score, or alpha_kl · example score.

    dloss/ds_bh = alpha_ce/N · (softmax(s_bh) − onehot(g_bh)) + w_bh/N · F/T · dKL/da, a = s/T, with
    dKL_fwd/da = q − p and dKL_rev/da = q (log q − log p − KL_rev); zero at masked positions.
    Backward returns grad_output · dS in a fresh buffer. Inputs: ``student_a`` is the [B, 2, L]
    student (``student_b`` None) or the start logits (``student_b`` the end logits); everything
    else travels in ``inp`` and never receives a gradient (the teacher, gold, masks).
    """

    @staticmethod
    def forward(ctx, student_a, student_b, inp: _Inputs, opts: SpanKDOptions, rows_per_program):
        compute_grad = any(ctx.needs_input_grad[:2])
        loss, ce_rows, kl_rows, score_rows, coef, bufs = _span_kd_forward(inp, opts, compute_grad,
                                                                          rows_per_program)
        ce_rows = ce_rows if ce_rows is not None else kl_rows.new_empty(0)
        score_rows = score_rows if score_rows is not None else kl_rows.new_empty(0)
        ctx.mark_non_differentiable(ce_rows, kl_rows, score_rows, coef)
        ctx.bufs = bufs
        ctx.coef = coef
        layout = None
        if inp.student_3d is not None:  # dS of a [B, 2, L] student is laid out like it
            probe = bufs.full if bufs is not None and bufs.full is not None else torch.empty_like(
                inp.student_3d, device="meta")
            layout = (tuple(probe.shape), tuple(probe.stride()))
        ctx.meta = _GradMeta(inp.B, inp.L, inp.s0.dtype, layout)
        return loss, ce_rows, kl_rows, score_rows, coef

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        bufs: _GradBuffers = ctx.bufs
        if bufs is None:
            return None, None, None, None, None
        fused = bufs.k0 is None
        if fused and not grad_loss.is_cuda and float(grad_loss) == 1.0:
            out = bufs  # no device sync on CPU: skip the multiply, hand back the forward's dS
        else:
            # On CUDA, checking grad_loss == 1 would need a device->host sync: always multiply.
            out = _span_kd_backward(grad_loss, bufs, ctx.coef, ctx.meta)
        if ctx.meta.layout is not None:
            return out.full, None, None, None, None
        return out.g0, out.g1, None, None, None


def _use_triton(inp: _Inputs, backend: Backend) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        _check_triton_usable(inp)
        return True
    if backend != "auto":
        raise ValueError(f"span_kd: backend={backend!r}: expected 'auto', 'triton' or 'torch'")
    return (HAS_TRITON and inp.s0.is_cuda and inp.s0.dtype in _KERNEL_DTYPES
            and inp.t0.dtype in _KERNEL_DTYPES)


def _span_kd(student, teacher, gold, lengths, mask, opts: SpanKDOptions, backend: Backend,
             validate: bool | None, rows_per_program: int | None) -> SpanKDOutput:
    inp = _normalise(student, teacher, gold, lengths, mask, opts)
    use_triton = _use_triton(inp, backend)
    _validate_values(inp, opts, validate)
    if not use_triton:
        return _reference(inp, opts)
    if inp.student_3d is not None:
        student_a, student_b = inp.student_3d, None
    else:
        student_a, student_b = inp.s0, inp.s1
    needs_grad = torch.is_grad_enabled() and (inp.s0.requires_grad or inp.s1.requires_grad)
    if needs_grad:
        loss, ce_rows, kl_rows, score_rows, coef = SpanKDFunction.apply(student_a, student_b, inp, opts,
                                                                        rows_per_program)
    else:
        loss, ce_rows, kl_rows, score_rows, coef, _ = _span_kd_forward(inp, opts, False, rows_per_program)
    return SpanKDOutput(
        loss=loss,
        ce_rows=ce_rows if opts.has_ce else None,
        kl_rows=kl_rows,
        coef_rows=score_rows if opts.ranked else None,
        coef=coef,
    )


def span_kd_loss(
    student: Tensor | Sequence[Tensor],
    teacher: Tensor | Sequence[Tensor],
    gold: Tensor | Sequence[Tensor] | None = None,
    *,
    lengths: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 2.0,
    k: int = 10,
    window: int = 5,
    direction: Direction = "forward",
    alpha_ce: float = 1.0,
    alpha_kl: float = 1.0,
    coef: CoefMode = "constant",
    scope: Scope = "batch",
    t2_scaling: bool = True,
    backend: Backend = "auto",
    validate: bool | None = None,
    rows_per_program: int | None = None,
) -> SpanKDOutput:
    """Span KD loss for extractive QA (formulas in the module docstring).

    student, teacher: [B, 2, L] (start, end) logits, or a pair ([B, L] start, [B, L] end). Any
        strides; the teacher gets no gradient. fp32/fp16/bf16 on the Triton path.
    gold: [B, 2] int (start, end) or a pair of [B]; needed when alpha_ce > 0 or coef != "constant".
    lengths: [B] int, positions >= length are excluded; mask: [B, L] bool, False excluded. Both may
        be given (intersection). Default: all L positions valid, as in the authors' code.
    backend: "auto" (Triton on CUDA for fp32/fp16/bf16, the PyTorch reference otherwise), "triton"
        (also on CPU under TRITON_INTERPRET=1), "torch" (reference).
    validate: check lengths/mask/gold values and raise a ValueError naming the bad examples. Default:
        on for CPU tensors; off for CUDA (it needs a device->host sync) where an invalid gold gives
        a NaN CE row (and loss) and a row with no valid position a NaN KL row.
    rows_per_program: examples per Triton program (power of two); default chosen from B, L, device.

    Returns :class:`SpanKDOutput` (loss, ce_rows, kl_rows, coef_rows, coef); only ``loss`` carries a
    gradient.
    """
    opts = SpanKDOptions(temperature=temperature, k=k, window=window, direction=direction, alpha_ce=alpha_ce,
                         alpha_kl=alpha_kl, coef=coef, scope=scope, t2_scaling=t2_scaling)
    return _span_kd(student, teacher, gold, lengths, mask, opts, backend, validate, rows_per_program)


class SpanKDLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`span_kd_loss`; options fixed at construction.

    >>> loss_fn = SpanKDLoss(temperature=2.0, coef="map")
    >>> out = loss_fn(student_logits, teacher_logits, gold)   # [B, 2, L], [B, 2, L], [B, 2]
    >>> out.loss.backward()
    """

    def __init__(self, *, backend: Backend = "auto", validate: bool | None = None, **options) -> None:
        super().__init__()
        self.options = SpanKDOptions(**options)
        self.backend = backend
        self.validate = validate

    def forward(self, student, teacher, gold=None, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> SpanKDOutput:
        return _span_kd(student, teacher, gold, lengths, mask, self.options, self.backend, self.validate, None)

    def extra_repr(self) -> str:
        return f"{self.options}, backend={self.backend!r}"
