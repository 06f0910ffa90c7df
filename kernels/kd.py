"""Vocabulary-scale knowledge-distillation loss: a fused Triton kernel and its PyTorch reference.

Rows x V logits, V from 2 (classification heads) to 250,002 (XLM-R MLM distillation). One call gives
the soft KD divergence at temperature T, an optional hard-label cross-entropy on the student, per-row
parts for logging and, in the same sweep over the logits, the gradient.

Conventions (both backends, identical)
--------------------------------------
Notation per row: s, t = student / teacher logits; a = s/T, b = t/T; q = softmax(a), p = softmax(b).

* ``direction="forward"``: D = KL(p || q) = sum p (log p - log q)    (teacher || student; Hinton KD)
* ``direction="reverse"``: D = KL(q || p)                            (student || teacher)
* ``direction="jsd"``:     D = beta KL(p || m) + (1-beta) KL(q || m),  m = beta p + (1-beta) q.
  This is trl's ``GKDTrainer.generalized_jsd_loss`` (beta = weight of the *teacher* in the mixture,
  default 0.5 = the symmetric JSD). Like trl, ``beta=0`` means forward KL and ``beta=1`` reverse KL;
  note these end points are trl's special cases, not the limits of the formula (which go to 0).
* T^2 scaling (``t2_scaling=True``, default): the divergence is multiplied by T^2, as in Hinton et al.
  and DistillKit, so the soft gradient (which scales like 1/T^2) keeps its weight against the hard CE
  when T changes; Carrino et al. (methods.md A.4/D.1) train with T=2 and T^2. Liger's distillation
  base has no T^2: pass ``t2_scaling=False`` to match it.
* Hard labels: CE(softmax(s), y) at T=1 on the student, rows with ``y == ignore_index`` skipped.
* Reduction ("batchmean over valid rows")::

      loss = alpha_kl * c_T * sum_r w_r D_r / n_kd  +  alpha_ce * sum_{r: y_r != ignore} CE_r / n_ce

  c_T = T^2 or 1; w_r = ``row_weight`` (default 1; a bool mask works); n_kd = #rows with w_r != 0;
  n_ce = #labelled rows. A weight is a per-row coefficient, not a normaliser: dividing by the count of
  valid rows (not by sum w) keeps a uniform weight such as Carrino's mAP@k coefficient effective.
  Counts are clamped to >= 1, so an all-masked batch gives loss 0 and zero gradient (not 0/0 = NaN).
  ``row_weight`` and labels are constants (no gradient).
* ``teacher_grad=False`` (default): the teacher gets no gradient. ``teacher_grad=True`` lets the
  gradient flow into the teacher logits too: ALSACE's ``get_KL_loss`` (methods.md C.5) is
  ``direction="forward"`` with ``student=z(x_a)``, ``teacher=z(x_b)``, T=1, ``teacher_grad=True``.
* Outputs: :class:`KDOutput` (loss, kl_rows = D_r without weight or T^2, ce_rows = CE_r or None),
  fp32 (float64 on the reference path for float64 inputs).
* NaN: a NaN logit in row r makes D_r, the loss and the whole gradient row r NaN (student and,
  with ``teacher_grad``, teacher); CE_r too if the NaN is in the student (CE reads only the student)
  and the row is labelled. Other rows stay finite. The kernel counts NaNs explicitly (x != x) and
  sets these outputs, so this holds on every backend and Triton version (the NaN behaviour of
  max/min is not specified: compiled ``tl.max`` drops NaN). A masked row (weight 0) is still
  computed and multiplied by 0, so NaN in a masked row also reaches the loss, as in the reference.

Math of the kernel (one program per row, online softmax over chunks of BLOCK_V columns)
---------------------------------------------------------------------------------------
Pass 1 keeps the running max of the *raw* logits, m_s and m_t, and rescaled sums (Milakov &
Gimelshein, online normaliser): d_a = sum exp((s - m_s)/T), d_b = sum exp((t - m_t)/T), d_1 =
sum exp(s - m_s) (T=1, for CE). When the max grows from m to m', every sum is multiplied by
exp((m - m')/T). Then lse(a) - lse(b) = (m_s - m_t)/T + log(d_a/d_b): this *difference* form stays
accurate when student ~ teacher, where two separate lse values of size ~log V would cancel.

* forward KL = sum p (b - a) - lse(b) + lse(a), and sum p (b - a) = (1/(T d_b)) sum exp((t-m_t)/T)(t-s)
  is one more online-rescalable sum -> the loss needs one read pass (anchors.md 1.4, factored form).
* reverse KL = sum q (a - b) - lse(a) + lse(b): same trick with the student weights -> one pass.
* JSD needs log m = log(beta p + (1-beta) q), which needs *both* final normalisers -> a second read
  pass for the loss.
A last pass writes the gradient (only if an input needs one). Gradients w.r.t. a and b (dD/ds = dD/da/T):

    forward:  dD/da = q - p                            dD/db = p (log p - log q - D)
    reverse:  dD/da = q (log q - log p - D)            dD/db = p - q
    jsd:      dD/da = (1-beta) q (log q - log m - KL(q||m))
              dD/db = beta p (log p - log m - KL(p||m))
    CE:       dCE/ds = softmax(s) - onehot(y)

Row coefficient: dL/ds_r = alpha_kl c_T w_r / (n_kd T) * dD/da + [y_r labelled] alpha_ce / n_ce * dCE/ds.
With T^2 scaling the soft part is alpha_kl T w_r/n_kd (q - p) for forward KL. The reverse and forward
gradients only need the row scalar D from pass 1, so forward and reverse KL take 2 passes and JSD 3
(1 / 1 / 2 when no gradient is needed). Everything is fp32 in registers; q - p is formed in fp32 and
rounded once, at the store, into a *fresh* buffer of the input dtype (never into the logits: Liger
#272, a Triton write does not bump autograd's version counter). No fp32 [N, V] tensor exists anywhere.
Backward multiplies that buffer by grad_output in place, in a kernel that reads grad_output on the
device and does nothing when it is 1 (no host sync).

Bytes moved (Triton, with gradient): forward/reverse KL read s and t twice and write dS once:
2 (|s| + |t|) + |dS|; JSD reads them three times. The benchmark reports the ideal-traffic figure
|s| + |t| + |dS| (6 B/element in bf16) as its GB/s, against a measured copy bandwidth.

Launch configuration heuristic (:func:`kd_launch_config`): BLOCK_V = min(next_pow2(V), 4096) and
num_warps = BLOCK_V / (32 threads x 8 elements), clamped to [1, 16]. Eight fp32 elements per thread per
tensor is one 16-byte vector load of bf16 and leaves room for the ~8 live [BLOCK_V] temporaries of the
JSD pass; Liger's JSD loses ~6x bandwidth at BLOCK 16384 with 4 warps (128 elements/thread, register
spill). Not tuned on hardware yet: ``kernels/bench/bench_kd.py --block-v/--num-warps`` overrides it.
The grid is one program per row, so N should be >= 2x the SM count (N >= 1k in MLM distillation).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

try:  # the reference path must work where triton is not installed
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None
    # Lets the kernel definitions below be parsed (``tl.constexpr`` annotations); they are never launched.
    tl = types.SimpleNamespace(constexpr=None)
    _jit = lambda fn: fn

__all__ = ["KDFunction", "KDLoss", "KDOutput", "kd_launch_config", "kd_loss", "kd_reference"]

Direction = Literal["forward", "reverse", "jsd"]
_DIRECTION_CODE = {"forward": 0, "reverse": 1, "jsd": 2}
_MAX_BLOCK_V = 4096
_ELEMENTS_PER_THREAD = 8


class KDOutput(NamedTuple):
    """Result of :func:`kd_loss`: scalar loss (with grad_fn) and detached per-row parts for logging."""

    loss: torch.Tensor
    """Scalar: alpha_kl * c_T * batchmean(w * D) + alpha_ce * mean CE (see the module docstring)."""
    kl_rows: torch.Tensor
    """[N] divergence D per row, without row weight or T^2."""
    ce_rows: torch.Tensor | None
    """[N] hard-label CE per row at T=1 (0 on ignored rows); None when no labels were given."""


@dataclass(frozen=True)
class _KDOptions:
    """The scalar options of :func:`kd_loss`, checked and normalised at construction (ValueError naming
    the argument), so :class:`KDLoss` fails when it is built, not at the first step."""

    temperature: float
    direction: Direction
    beta: float
    t2_scaling: bool
    alpha_kl: float
    alpha_ce: float
    ignore_index: int

    def __post_init__(self) -> None:
        if self.direction not in _DIRECTION_CODE:
            raise ValueError(f"kd_loss: direction must be one of {sorted(_DIRECTION_CODE)}, got {self.direction!r}")
        temperature = _finite_float("temperature", self.temperature)
        if temperature <= 0:
            raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
        beta = _finite_float("beta", self.beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"kd_loss: beta must be in [0, 1], got {beta}")
        alpha_kl = _finite_float("alpha_kl", self.alpha_kl)
        alpha_ce = _finite_float("alpha_ce", self.alpha_ce)
        if alpha_kl < 0 or alpha_ce < 0:
            raise ValueError(f"kd_loss: alpha_kl and alpha_ce must be >= 0, got {alpha_kl} and {alpha_ce}")
        normalised = dict(temperature=temperature, beta=beta, t2_scaling=bool(self.t2_scaling), alpha_kl=alpha_kl,
                          alpha_ce=alpha_ce, ignore_index=int(self.ignore_index))  # fmt: skip
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: the dataclass way to set fields in __post_init__

    @property
    def kernel_direction(self) -> Direction:
        """trl's end points: JSD with beta=0 is forward KL, beta=1 is reverse KL."""
        if self.direction == "jsd" and self.beta == 0.0:
            return "forward"
        if self.direction == "jsd" and self.beta == 1.0:
            return "reverse"
        return self.direction

    @property
    def kd_scale(self) -> float:
        """alpha_kl * c_T: the factor in front of the batchmean of the divergence."""
        return self.alpha_kl * (self.temperature**2 if self.t2_scaling else 1.0)


def _finite_float(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"kd_loss: {name} must be a finite number, got {value}")
    return value


def _validate(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    row_weight: torch.Tensor | None,
    opts: _KDOptions,
) -> None:
    """Check shapes, dtypes and devices of the tensors; raise ValueError naming the argument and what was expected."""
    for name, x in (("student_logits", student), ("teacher_logits", teacher)):
        if x.dim() != 2:
            raise ValueError(f"kd_loss: {name} must be 2-D [N, V] (flatten with .view(-1, V)), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"kd_loss: {name} must be a floating tensor, got {x.dtype}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"kd_loss: student_logits {tuple(student.shape)} and teacher_logits {tuple(teacher.shape)} differ"
        )
    if student.device != teacher.device:
        raise ValueError(f"kd_loss: student on {student.device} but teacher on {teacher.device}")
    n_rows, vocab = student.shape
    if vocab < 1:
        raise ValueError("kd_loss: logits need at least one column")
    if labels is not None:
        if labels.shape != (n_rows,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"kd_loss: labels must be an integer tensor of shape ({n_rows},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if labels.device != student.device:
            raise ValueError(f"kd_loss: labels on {labels.device} but logits on {student.device}")
        # A range check reads the labels back; free on CPU, a host sync on CUDA. On CUDA the kernel
        # instead turns an out-of-range label into a NaN CE row (and loss), so it is never silent.
        if labels.device.type == "cpu":
            bad = (labels != opts.ignore_index) & ((labels < 0) | (labels >= vocab))
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"kd_loss: labels[{row}] = {int(labels[row])} is outside [0, {vocab}) "
                    f"and not ignore_index={opts.ignore_index}"
                )
    elif opts.alpha_ce != 0.0:
        raise ValueError(f"kd_loss: alpha_ce={opts.alpha_ce} needs hard labels, but labels is None")
    if row_weight is not None:
        if row_weight.shape != (n_rows,):
            raise ValueError(f"kd_loss: row_weight must have shape ({n_rows},), got {tuple(row_weight.shape)}")
        if row_weight.device != student.device:
            raise ValueError(f"kd_loss: row_weight on {row_weight.device} but logits on {student.device}")


def _row_coefficients(
    n_rows: int, row_weight: torch.Tensor | None, labels: torch.Tensor | None, opts: _KDOptions
) -> tuple[torch.Tensor | None, float, torch.Tensor | None]:
    """(w_r / n_kd or None, constant kd factor, 1/n_ce or None), computed on the device without a sync."""
    if row_weight is None:
        kd_row_coef, kd_const = None, opts.kd_scale / max(n_rows, 1)
    else:
        w = row_weight.detach().to(torch.float32)
        kd_row_coef, kd_const = w / (w != 0).sum().clamp(min=1), opts.kd_scale
    inv_n_ce = None
    if labels is not None:
        inv_n_ce = (labels != opts.ignore_index).sum().clamp(min=1).to(torch.float32).reciprocal()
    return kd_row_coef, kd_const, inv_n_ce


# --------------------------------------------------------------------------------------------------
# PyTorch reference: the CPU path and the test oracle
# --------------------------------------------------------------------------------------------------


def _reference(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    row_weight: torch.Tensor | None,
    opts: _KDOptions,
    teacher_grad: bool,
) -> KDOutput:
    # fp32 math for fp32/bf16/fp16 (as in the kernel), float64 when any input is float64.
    compute = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32
    s = student.to(compute)
    t = (teacher if teacher_grad else teacher.detach()).to(compute)
    log_q = F.log_softmax(s / opts.temperature, dim=-1)
    log_p = F.log_softmax(t / opts.temperature, dim=-1)
    direction = opts.kernel_direction
    if direction == "forward":
        div = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif direction == "reverse":
        div = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        log_m = torch.logaddexp(log_p + math.log(opts.beta), log_q + math.log1p(-opts.beta))
        div = opts.beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - opts.beta) * (
            log_q.exp() * (log_q - log_m)
        ).sum(-1)
    n_rows = student.shape[0]
    if row_weight is None:
        loss = opts.kd_scale * div.sum() / max(n_rows, 1)
    else:
        w = row_weight.detach().to(compute)
        loss = opts.kd_scale * (w * div).sum() / (w != 0).sum().clamp(min=1)
    ce_rows = None
    if labels is not None:
        ce = F.cross_entropy(s, labels.long(), ignore_index=opts.ignore_index, reduction="none")
        n_ce = (labels != opts.ignore_index).sum().clamp(min=1)
        loss = loss + opts.alpha_ce * ce.sum() / n_ce
        ce_rows = ce.detach()
    return KDOutput(loss, div.detach(), ce_rows)


def kd_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    direction: Direction = "forward",
    beta: float = 0.5,
    t2_scaling: bool = True,
    alpha_kl: float = 1.0,
    alpha_ce: float = 0.0,
    ignore_index: int = -100,
    teacher_grad: bool = False,
) -> KDOutput:
    """Plain differentiable PyTorch KD loss, any float dtype (float64 for gradcheck).

    Same arguments and semantics as :func:`kd_loss`; gradients come from autograd.
    """
    opts = _KDOptions(temperature, direction, beta, t2_scaling, alpha_kl, alpha_ce, ignore_index)
    _validate(student_logits, teacher_logits, labels, row_weight, opts)
    return _reference(student_logits, teacher_logits, labels, row_weight, opts, teacher_grad)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@_jit
def _load_row_chunk(row_ptr, cols, mask):
    """One chunk of a row as fp32, masked lanes = -1e30. The mask value is applied *after* the upcast:
    as a load ``other`` it would be cast to the input dtype first, and -1e30 is -inf in fp16."""
    x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, x, -1e30)


@_jit
def _log_mixture(log_p, log_q, log_beta, log_1m_beta):
    """log m = log(beta p + (1-beta) q) = logaddexp(log beta + log p, log(1-beta) + log q), stable form.
    One definition for the JSD loss pass and the gradient pass, so the gradient is that of the loss."""
    x_p = log_p + log_beta
    x_q = log_q + log_1m_beta
    hi = tl.maximum(x_p, x_q)
    return hi + tl.log(1.0 + tl.exp(tl.minimum(x_p, x_q) - hi))


@_jit
def _kd_fwd_kernel(
    s_ptr,  # [N, V] student logits, row stride s_stride, unit column stride, any float dtype
    s_stride,
    t_ptr,  # [N, V] teacher logits, row stride t_stride
    t_stride,
    ds_ptr,  # [N, V] contiguous out: dL/ds in the student dtype (written only if STUDENT_GRAD)
    dt_ptr,  # [N, V] contiguous out: dL/dt in the teacher dtype (written only if TEACHER_GRAD)
    labels_ptr,  # [N] int64 hard labels (read only if HAS_LABELS)
    row_coef_ptr,  # [N] fp32 w_r / n_kd (read only if HAS_ROW_COEF)
    inv_n_ce_ptr,  # [1] fp32 1 / n_ce (read only if HAS_LABELS)
    kl_rows_ptr,  # [N] fp32 out: divergence D_r
    ce_rows_ptr,  # [N] fp32 out: CE_r at T=1, 0 on ignored rows (written only if HAS_LABELS)
    loss_rows_ptr,  # [N] fp32 out: this row's share of the loss
    V,  # columns
    inv_T,  # 1 / temperature
    kd_const,  # alpha_kl * c_T (/ N when there is no row weight)
    alpha_ce,
    beta,  # JSD teacher weight
    log_beta,  # log(beta), log(1 - beta): JSD only
    log_1m_beta,
    ignore_index,
    DIRECTION: tl.constexpr,  # 0 forward KL(p||q), 1 reverse KL(q||p), 2 generalized JSD
    HAS_ROW_COEF: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    CE_GRAD: tl.constexpr,  # alpha_ce != 0
    STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    # int64: row * stride overflows int32 at 16k rows x 250k columns (triton issue #1058).
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    offs = tl.arange(0, BLOCK_V)

    # ---- pass 1: online max / normalisers (and the one-pass KL sums) ---------------------------
    n_nan_s = 0  # NaN count of the student row: the explicit NaN flag (see "NaN" below)
    n_nan_t = 0
    m_s = -1e30  # running max of raw student logits (finite: see _load_row_chunk)
    m_t = -1e30  # running max of raw teacher logits
    d_a = 0.0  # sum exp((s - m_s)/T)
    d_b = 0.0  # sum exp((t - m_t)/T)
    d_1 = 0.0  # sum exp(s - m_s): CE normaliser at T=1
    w_kl = 0.0  # forward: sum exp((t-m_t)/T)(t-s); reverse: sum exp((s-m_s)/T)(s-t)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        mask = cols < V
        s = _load_row_chunk(s_row, cols, mask)  # [BLOCK_V] fp32, -1e30 on masked lanes
        t = _load_row_chunk(t_row, cols, mask)  # [BLOCK_V]
        # x != x is IEEE's NaN test: defined on every backend, unlike the NaN behaviour of max/min
        # (tl.max drops NaN when compiled, the interpreter's follows numpy and changed in Triton 3.9).
        n_nan_s += tl.sum((s != s).to(tl.int32), axis=0)
        n_nan_t += tl.sum((t != t).to(tl.int32), axis=0)
        m_s_new = tl.maximum(m_s, tl.max(s, axis=0))  # may or may not be NaN on a NaN row: overridden below
        m_t_new = tl.maximum(m_t, tl.max(t, axis=0))
        e_s = tl.exp((s - m_s_new) * inv_T)  # [BLOCK_V] unnormalised q; 0 on masked lanes
        e_t = tl.exp((t - m_t_new) * inv_T)  # [BLOCK_V] unnormalised p
        rescale_s = tl.exp((m_s - m_s_new) * inv_T)  # old sums were relative to the old max
        rescale_t = tl.exp((m_t - m_t_new) * inv_T)
        d_a = d_a * rescale_s + tl.sum(e_s, axis=0)
        d_b = d_b * rescale_t + tl.sum(e_t, axis=0)
        if DIRECTION == 0:
            w_kl = w_kl * rescale_t + tl.sum(e_t * (t - s), axis=0)  # masked lanes: 0 * (-1e30 - -1e30) = 0
        if DIRECTION == 1:
            w_kl = w_kl * rescale_s + tl.sum(e_s * (s - t), axis=0)
        if HAS_LABELS:
            d_1 = d_1 * tl.exp(m_s - m_s_new) + tl.sum(tl.exp(s - m_s_new), axis=0)
        m_s = m_s_new
        m_t = m_t_new

    log_d_a = tl.log(d_a)
    log_d_b = tl.log(d_b)
    lse_gap = (m_s - m_t) * inv_T + (log_d_a - log_d_b)  # lse(a) - lse(b), cancellation-free
    kl_pm = 0.0  # JSD: KL(p || m)
    kl_qm = 0.0  # JSD: KL(q || m)
    if DIRECTION == 0:
        div = w_kl / d_b * inv_T + lse_gap  # sum p(b - a) - lse(b) + lse(a)
    elif DIRECTION == 1:
        div = w_kl / d_a * inv_T - lse_gap  # sum q(a - b) - lse(a) + lse(b)
    else:
        # ---- pass 2 (JSD only): log m needs both final normalisers --------------------------
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            mask = cols < V
            s = _load_row_chunk(s_row, cols, mask)
            t = _load_row_chunk(t_row, cols, mask)
            log_q = (s - m_s) * inv_T - log_d_a  # [BLOCK_V]
            log_p = (t - m_t) * inv_T - log_d_b
            log_m = _log_mixture(log_p, log_q, log_beta, log_1m_beta)
            kl_pm += tl.sum(tl.where(mask, tl.exp(log_p) * (log_p - log_m), 0.0), axis=0)
            kl_qm += tl.sum(tl.where(mask, tl.exp(log_q) * (log_q - log_m), 0.0), axis=0)
        div = beta * kl_pm + (1.0 - beta) * kl_qm
    # A NaN logit makes the row's divergence (and below its CE and gradients) NaN by construction,
    # whatever max/min/exp did with it on this backend.
    row_nan = (n_nan_s + n_nan_t) > 0
    div = tl.where(row_nan, float("nan"), div)

    kd_coef = kd_const  # loss weight of D_r: alpha_kl * c_T * w_r / n_kd
    if HAS_ROW_COEF:
        kd_coef = kd_coef * tl.load(row_coef_ptr + row)
    row_loss = kd_coef * div
    tl.store(kl_rows_ptr + row, div)

    ce_coef = 0.0
    y = 0
    if HAS_LABELS:
        y = tl.load(labels_ptr + row)
        labelled = y != ignore_index
        in_range = (y >= 0) & (y < V)
        y_safe = tl.where(labelled & in_range, y, 0)
        s_y = tl.load(s_row + y_safe).to(tl.float32)
        ce = (m_s - s_y) + tl.log(d_1)  # lse(s) - s_y; m_s - s_y first: exact even at |logits| ~ 1e4
        # An out-of-range label (only CUDA inputs skip the host check) poisons the row with NaN.
        ce = tl.where(labelled, tl.where(in_range & (n_nan_s == 0), ce, float("nan")), 0.0)
        tl.store(ce_rows_ptr + row, ce)
        ce_coef = tl.where(labelled, alpha_ce * tl.load(inv_n_ce_ptr), 0.0)
        row_loss += ce_coef * ce
    tl.store(loss_rows_ptr + row, row_loss)

    # ---- last pass: gradient into its own buffers ---------------------------------------------
    if STUDENT_GRAD or TEACHER_GRAD:
        g = kd_coef * inv_T  # dD/ds = dD/da / T
        inv_d_a = 1.0 / d_a
        inv_d_b = 1.0 / d_b
        ds_row = ds_ptr + row * V
        dt_row = dt_ptr + row * V
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            mask = cols < V
            s = _load_row_chunk(s_row, cols, mask)
            t = _load_row_chunk(t_row, cols, mask)
            q = tl.exp((s - m_s) * inv_T) * inv_d_a  # [BLOCK_V] softmax(s/T)
            p = tl.exp((t - m_t) * inv_T) * inv_d_b  # [BLOCK_V] softmax(t/T)
            if DIRECTION == 0:
                grad_a = q - p  # formed in fp32, rounded once at the store
                grad_b = p * ((t - s) * inv_T + lse_gap - div)  # log p - log q = (b - a) + lse(a) - lse(b)
            elif DIRECTION == 1:
                grad_a = q * ((s - t) * inv_T - lse_gap - div)
                grad_b = p - q
            else:
                log_q = (s - m_s) * inv_T - log_d_a
                log_p = (t - m_t) * inv_T - log_d_b
                log_m = _log_mixture(log_p, log_q, log_beta, log_1m_beta)
                grad_a = (1.0 - beta) * q * (log_q - log_m - kl_qm)
                grad_b = beta * p * (log_p - log_m - kl_pm)
            if STUDENT_GRAD:
                ds = g * grad_a
                if CE_GRAD:
                    onehot = tl.where(cols == y, 1.0, 0.0)
                    ds += ce_coef * (tl.exp(s - m_s) / d_1 - onehot)
                ds = tl.where(row_nan, float("nan"), ds)
                tl.store(ds_row + cols, ds.to(ds_ptr.dtype.element_ty), mask=mask)
            if TEACHER_GRAD:
                dt = tl.where(row_nan, float("nan"), g * grad_b)
                tl.store(dt_row + cols, dt.to(dt_ptr.dtype.element_ty), mask=mask)


@_jit
def _scale_rows_kernel(
    x_ptr,  # [N, V] contiguous gradient buffer, scaled in place
    scale_ptr,  # [1] grad_output (any float dtype)
    V,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * V
    offs = tl.arange(0, BLOCK_V)
    scale = tl.load(scale_ptr).to(tl.float32)
    # The loss is usually the last op (grad_output == 1): skip the full read/write, decided on the device.
    if scale != 1.0:
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            mask = cols < V
            x = tl.load(x_row + cols, mask=mask).to(tl.float32)
            tl.store(x_row + cols, (x * scale).to(x_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------


def kd_launch_config(vocab: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for a row of ``vocab`` columns; see the module docstring for the why."""
    block_v = min(1 << max(vocab - 1, 0).bit_length(), _MAX_BLOCK_V)  # next power of two, capped
    num_warps = min(16, max(1, block_v // (32 * _ELEMENTS_PER_THREAD)))
    return block_v, num_warps


def _check_triton_usable(student: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("kd_loss(backend='triton'): triton is not installed")
    # What counts is how the kernels were *decorated*: TRITON_INTERPRET set after the import is too late.
    interpreted = type(_kd_fwd_kernel).__name__ == "InterpretedFunction"
    if student.device.type == "cpu" and not interpreted:
        raise RuntimeError(
            "kd_loss(backend='triton') on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before triton (and kernels.kd) are imported"
        )


def _kd_triton_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    row_coef: torch.Tensor | None,
    kd_const: float,
    inv_n_ce: torch.Tensor | None,
    opts: _KDOptions,
    student_grad: bool,
    teacher_grad: bool,
    block_v: int | None = None,
    num_warps: int | None = None,
):
    """Launch the fused kernel: (loss, kl_rows, ce_rows, dS or None, dT or None). No autograd here."""
    n_rows, vocab = student.shape
    if student.stride(-1) != 1:
        student = student.contiguous()
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    device = student.device
    kl_rows = torch.empty(n_rows, dtype=torch.float32, device=device)
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=device)
    ce_rows = torch.zeros(n_rows if labels is not None else 0, dtype=torch.float32, device=device)
    ds = torch.empty_like(student, memory_format=torch.contiguous_format) if student_grad else None
    dt = torch.empty_like(teacher, memory_format=torch.contiguous_format) if teacher_grad else None
    if labels is not None:
        labels = labels.to(torch.int64).contiguous()
    if n_rows == 0:
        return loss_rows.sum(), kl_rows, ce_rows, ds, dt
    default_block, default_warps = kd_launch_config(vocab)
    block_v = block_v or default_block
    num_warps = num_warps or default_warps
    direction = opts.kernel_direction
    beta = opts.beta
    log_beta = math.log(beta) if 0 < beta < 1 else 0.0
    log_1m_beta = math.log1p(-beta) if 0 < beta < 1 else 0.0
    dummy = kl_rows  # stands in for pointers a constexpr flag switches off
    _kd_fwd_kernel[(n_rows,)](
        student, student.stride(0),
        teacher, teacher.stride(0),
        ds if ds is not None else dummy,
        dt if dt is not None else dummy,
        labels if labels is not None else dummy,
        row_coef if row_coef is not None else dummy,
        inv_n_ce if inv_n_ce is not None else dummy,
        kl_rows, ce_rows if labels is not None else dummy, loss_rows,
        vocab, 1.0 / opts.temperature, kd_const, opts.alpha_ce, beta, log_beta, log_1m_beta,
        opts.ignore_index,
        DIRECTION=_DIRECTION_CODE[direction],
        HAS_ROW_COEF=row_coef is not None,
        HAS_LABELS=labels is not None,
        CE_GRAD=labels is not None and opts.alpha_ce != 0.0,
        STUDENT_GRAD=student_grad,
        TEACHER_GRAD=teacher_grad,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )  # fmt: skip
    return loss_rows.sum(), kl_rows, ce_rows, ds, dt


def _scale_in_place(buffer: torch.Tensor, grad_output: torch.Tensor) -> None:
    n_rows, vocab = buffer.shape
    if n_rows == 0:
        return
    block_v, num_warps = kd_launch_config(vocab)
    scale = grad_output.detach().reshape(1).to(torch.float32)
    _scale_rows_kernel[(n_rows,)](buffer, scale, vocab, BLOCK_V=block_v, num_warps=num_warps)


class KDFunction(torch.autograd.Function):
    """Fused KD loss with the gradient computed in the forward (Triton).

    ``forward(student [N,V], teacher [N,V], labels [N] | None, row_coef [N] | None, kd_const,
    inv_n_ce [1] | None, opts, launch) -> (loss, kl_rows, ce_rows)``::

        loss = sum_r kd_const * row_coef_r * D_r(softmax(t/T), softmax(s/T)) + alpha_ce * inv_n_ce * sum CE_r
        dL/ds = kd_const row_coef_r / T * dD/da + alpha_ce inv_n_ce (softmax(s) - onehot(y))

    (D, its gradients and the coefficients: module docstring.) The gradient w.r.t. the student
    (and the teacher, when the teacher requires grad) is written in the forward into fresh buffers
    of the input dtypes; ``backward`` hands them to autograd after an in-place multiply by
    grad_output that the device skips when grad_output == 1. The buffers are released to autograd, so
    a second backward through the same graph (``retain_graph=True``) raises instead of reusing them.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, row_coef, kd_const, inv_n_ce, opts, launch):
        student_grad, teacher_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, kl_rows, ce_rows, ds, dt = _kd_triton_forward(
            student, teacher, labels, row_coef, kd_const, inv_n_ce, opts, student_grad, teacher_grad, *launch
        )
        ctx.grad_buffers = (ds, dt)
        ctx.mark_non_differentiable(kl_rows, ce_rows)
        return loss, kl_rows, ce_rows

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl_rows, _grad_ce_rows):
        if ctx.grad_buffers is None:
            raise RuntimeError(
                "KDFunction: backward ran twice through the same graph; its gradient buffers were handed "
                "to autograd the first time. Recompute the loss instead of using retain_graph=True."
            )
        ds, dt = ctx.grad_buffers
        ctx.grad_buffers = None  # drop our reference: autograd may adopt the buffer as .grad without a copy
        for buffer in (ds, dt):
            if buffer is not None:
                _scale_in_place(buffer, grad_loss)
        return ds, dt, None, None, None, None, None, None


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    direction: Direction = "forward",
    beta: float = 0.5,
    t2_scaling: bool = True,
    alpha_kl: float = 1.0,
    alpha_ce: float = 0.0,
    ignore_index: int = -100,
    teacher_grad: bool = False,
    backend: Literal["auto", "triton", "torch"] = "auto",
    block_v: int | None = None,
    num_warps: int | None = None,
) -> KDOutput:
    """Knowledge-distillation loss over [N, V] logits (conventions and math: module docstring).

    Args:
        student_logits, teacher_logits: [N, V] float logits (fp32, bf16, fp16; float64 on "torch").
        labels: optional [N] integer hard labels for the student CE at T=1; ``ignore_index`` skips a row.
        row_weight: optional [N] per-row weight or bool mask of the KD term; rows with 0 are not counted.
        temperature: T > 0, applied to both logits inside the loss.
        direction: "forward" KL(teacher||student), "reverse" KL(student||teacher) or "jsd" (with beta).
        beta: generalized-JSD teacher weight in [0, 1] (trl convention).
        t2_scaling: multiply the divergence by T^2 (default, Hinton / DistillKit; False = Liger).
        alpha_kl, alpha_ce: weights of the KD and hard-label terms (>= 0; alpha_ce needs labels).
        teacher_grad: also return a gradient for the teacher logits (ALSACE's two-sided consistency).
        backend: "auto" = Triton for fp32/bf16/fp16 CUDA tensors, the PyTorch reference otherwise;
            "triton" forces the kernel (CPU tensors need TRITON_INTERPRET=1); "torch" forces the reference.
        block_v, num_warps: override :func:`kd_launch_config` (tuning and tests).

    Returns:
        :class:`KDOutput` (loss, kl_rows, ce_rows).
    """
    opts = _KDOptions(temperature, direction, beta, t2_scaling, alpha_kl, alpha_ce, ignore_index)
    _validate(student_logits, teacher_logits, labels, row_weight, opts)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"kd_loss: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        kernel_dtypes = (torch.float32, torch.bfloat16, torch.float16)
        use_triton = (
            triton is not None
            and student_logits.is_cuda
            and student_logits.dtype in kernel_dtypes
            and teacher_logits.dtype in kernel_dtypes
        )
    else:
        use_triton = backend == "triton"
    if not use_triton:
        return _reference(student_logits, teacher_logits, labels, row_weight, opts, teacher_grad)

    _check_triton_usable(student_logits)
    teacher = teacher_logits if teacher_grad else teacher_logits.detach()
    row_coef, kd_const, inv_n_ce = _row_coefficients(student_logits.shape[0], row_weight, labels, opts)
    loss, kl_rows, ce_rows = KDFunction.apply(
        student_logits, teacher, labels, row_coef, kd_const, inv_n_ce, opts, (block_v, num_warps)
    )
    return KDOutput(loss, kl_rows, ce_rows if labels is not None else None)


class KDLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`kd_loss`: options at construction, tensors at call time."""

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        direction: Direction = "forward",
        beta: float = 0.5,
        t2_scaling: bool = True,
        alpha_kl: float = 1.0,
        alpha_ce: float = 0.0,
        ignore_index: int = -100,
        teacher_grad: bool = False,
        backend: Literal["auto", "triton", "torch"] = "auto",
    ) -> None:
        super().__init__()
        self.options = dict(
            temperature=temperature, direction=direction, beta=beta, t2_scaling=t2_scaling,
            alpha_kl=alpha_kl, alpha_ce=alpha_ce, ignore_index=ignore_index,
            teacher_grad=teacher_grad, backend=backend,
        )  # fmt: skip
        # Fail at construction, not at the first step.
        _KDOptions(temperature, direction, beta, t2_scaling, alpha_kl, alpha_ce, ignore_index)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        row_weight: torch.Tensor | None = None,
    ) -> KDOutput:
        return kd_loss(student_logits, teacher_logits, labels, row_weight, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
