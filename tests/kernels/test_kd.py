"""Vocabulary-scale KD loss (kernels/kd.py): Triton kernel against a float64 PyTorch reference.

On CPU the kernel runs in the Triton interpreter (about 3.5 ms per program instance plus numpy work per
chunk), so shapes keep few rows; multi-chunk online statistics are exercised with a small forced
``block_v``. On a CUDA machine the same tests run the compiled kernel on the GPU.

Inputs are fresh random numbers each run; the seed is in every assertion message. Reproduce a failure
with ``XDIST_TEST_SEED=<seed> pytest tests/kernels/test_kd.py``.

Tolerances (fp32 arithmetic inside the kernel, compared with float64):
* An fp32 rounding of a scaled logit a = s/T costs eps32 * |a|; it enters exp() arguments, log
  normalisers and the (t - s)/T factors, so every error is bounded by C * eps32 * (1 + max|logit|/T)
  times the size of the quantity (max |value| of the compared tensor). ``FP32_C`` = 64 leaves about
  20x margin over the largest ratio observed (3.4 over 6 seeds of the option matrix, half-precision,
  teacher-gradient and tiny-V cases).
* bf16/fp16 inputs: the kernel and the reference see the *same* half-precision numbers, so the only extra
  error is the single rounding of the gradient at the store: half an ulp, at most 2^-8 (bf16) / 2^-11
  (fp16) relative, checked elementwise with that rtol plus the fp32 bound. Exception: the Triton 3.7
  *interpreter* truncates fp32 -> bf16 (``cast_impl`` calls ``_convert_float`` without a rounding mode),
  where compiled Triton rounds to nearest even; under the interpreter the bf16 bound is one ulp, 2^-7.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# tests/kernels/conftest.py has set TRITON_INTERPRET=1 (no CUDA) before this import.
from kernels.kd import KDLoss, _kd_triton_forward, _KDOptions, kd_launch_config, kd_loss, kd_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS32 = torch.finfo(torch.float32).eps
# Relative rounding bound of one gradient store (see the module docstring for the interpreter's bf16).
BF16_STORE = 2.0**-7 if os.environ.get("TRITON_INTERPRET") == "1" else 2.0**-8
FP16_STORE = 2.0**-11
FP32_C = 64.0
DIRECTIONS = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.5), ("jsd", 0.3)]
LAUNCH = ("block_v", "num_warps")  # kernel-only options


def _randn(gen: torch.Generator, *shape: int, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, dtype)


def _labels(gen: torch.Generator, n_rows: int, vocab: int, ignored: tuple[int, ...] = (1,)) -> torch.Tensor:
    labels = torch.randint(0, vocab, (n_rows,), generator=gen)
    labels[list(ignored)] = -100
    return labels.to(DEVICE)


def _run(student, teacher, labels=None, row_weight=None, *, grad_scale=1.0, backend="triton", **kw):
    """Loss parts and gradients of one backend. Inputs are cloned; the originals are never touched."""
    if backend == "reference":  # float64 leaves: the oracle's gradient is not rounded to the input dtype
        s = student.detach().double().requires_grad_()
        t = teacher.detach().double().requires_grad_()
        out = kd_reference(s, t, labels, row_weight, **{k: v for k, v in kw.items() if k not in LAUNCH})
    else:
        s = student.detach().clone().requires_grad_()
        t = teacher.detach().clone().requires_grad_()
        out = kd_loss(s, t, labels, row_weight, backend=backend, **kw)
    if grad_scale == 1.0:
        out.loss.backward()
    else:
        (out.loss * grad_scale).backward()
    return out, s.grad, t.grad


def _check(actual, expected, *, what: str, seed: int, scale: float, rtol: float = 1e-5, c: float = FP32_C):
    """|actual - expected| <= c * eps32 * scale * max|expected| + rtol * |expected|, elementwise."""
    assert actual is not None and expected is not None, f"{what}: missing tensor (seed={seed})"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape} (seed={seed})"
    atol = c * EPS32 * scale * max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-30)
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    worst = int((err - bound).argmax()) if err.numel() else 0
    assert bool((err <= bound).all()), (
        f"{what}: max error {float(err.max()):.3e} exceeds tolerance (atol {atol:.3e}, rtol {rtol}); "
        f"worst flat index {worst}: got {float(actual.flatten()[worst])}, "
        f"expected {float(expected.flatten()[worst])} (seed={seed})"
    )


def _compare(student, teacher, labels=None, row_weight=None, *, seed, grad_scale=1.0, rtol=1e-5, scale=None, **kw):
    """Triton vs float64 reference: loss, per-row parts, student and teacher gradients."""
    got, gs, gt = _run(student, teacher, labels, row_weight, grad_scale=grad_scale, **kw)
    ref, rs, rt = _run(student, teacher, labels, row_weight, grad_scale=grad_scale, backend="reference", **kw)
    if scale is None:  # size of the fp32 arguments: logits / T for the divergence, logits at T=1 for the CE
        scale = 1.0 + max(float(student.abs().max()), float(teacher.abs().max())) / min(kw.get("temperature", 1.0), 1.0)
    _check(got.loss, ref.loss, what="loss", seed=seed, scale=scale)
    _check(got.kl_rows, ref.kl_rows, what="kl_rows", seed=seed, scale=scale)
    if labels is not None:
        _check(got.ce_rows, ref.ce_rows, what="ce_rows", seed=seed, scale=scale)
    else:
        assert got.ce_rows is None and ref.ce_rows is None
    assert gs.dtype == student.dtype, f"student grad dtype {gs.dtype} != input dtype {student.dtype}"
    _check(gs, rs, what="student grad", seed=seed, scale=scale, rtol=rtol)
    if kw.get("teacher_grad", False):
        assert gt.dtype == teacher.dtype
        _check(gt, rt, what="teacher grad", seed=seed, scale=scale, rtol=rtol)
    else:
        assert gt is None and rt is None, f"teacher received a gradient with teacher_grad=False (seed={seed})"
    return got, ref, gs


# --------------------------------------------------------------------------------------------------
# Triton vs reference over the option matrix
# --------------------------------------------------------------------------------------------------

# (alpha_kl, labels?, alpha_ce, row weights?)
LOSS_TERMS = {
    "kd_only": (1.0, False, 0.0, False),
    "kd_weighted_ce_logged": (0.4, True, 0.0, True),
    "kd_plus_ce": (1.0, True, 1.0, False),
    "ce_only_weighted": (0.0, True, 1.0, True),
}


@pytest.mark.parametrize("terms", list(LOSS_TERMS))
@pytest.mark.parametrize("temperature,t2_scaling", [(1.0, True), (2.5, True), (2.5, False)])
@pytest.mark.parametrize("direction,beta", DIRECTIONS)
def test_matches_reference_over_options(seed, direction, beta, temperature, t2_scaling, terms):
    alpha_kl, with_labels, alpha_ce, weighted = LOSS_TERMS[terms]
    gen = torch.Generator().manual_seed(seed)
    n_rows, vocab = 5, 300  # block_v=64: 5 chunks, the last one 44 wide
    student, teacher = _randn(gen, n_rows, vocab), _randn(gen, n_rows, vocab)
    labels = _labels(gen, n_rows, vocab, ignored=(1,)) if with_labels else None
    row_weight = torch.tensor([1.0, 0.0, 0.25, 2.0, 1.0], device=DEVICE) if weighted else None
    _compare(
        student, teacher, labels, row_weight, seed=seed, temperature=temperature, direction=direction,
        beta=beta, t2_scaling=t2_scaling, alpha_kl=alpha_kl, alpha_ce=alpha_ce, block_v=64,
    )  # fmt: skip


@pytest.mark.parametrize("direction,beta", DIRECTIONS + [("jsd", 0.0), ("jsd", 1.0)])
def test_teacher_grad_and_grad_output_scaling(seed, direction, beta):
    """Both gradient buffers, scaled by a grad_output != 1 (the in-place scaling path)."""
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 4, 130), _randn(gen, 4, 130)
    labels = _labels(gen, 4, 130, ignored=(2,))
    for grad_scale in (3.7, -0.25):
        _compare(
            student, teacher, labels, seed=seed, grad_scale=grad_scale, temperature=1.7, direction=direction,
            beta=beta, alpha_ce=0.5, teacher_grad=True, block_v=32,
        )  # fmt: skip


def test_jsd_end_points_are_trl_forward_and_reverse(seed):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 3, 40), _randn(gen, 3, 40)
    for beta, direction in ((0.0, "forward"), (1.0, "reverse")):
        jsd = kd_loss(student, teacher, direction="jsd", beta=beta, temperature=2.0, backend="triton")
        kl = kd_reference(student, teacher, direction=direction, temperature=2.0)
        _check(jsd.kl_rows, kl.kl_rows, what=f"jsd beta={beta}", seed=seed, scale=10.0)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [2, 3])
@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3])
def test_classification_heads(seed, vocab, direction, beta):
    """V = 2 / 3 (XNLI heads): one tiny block, most lanes of a warp idle."""
    assert kd_launch_config(vocab) == ({2: 2, 3: 4}[vocab], 1)
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 7, vocab), _randn(gen, 7, vocab)
    labels = _labels(gen, 7, vocab, ignored=(0, 4))
    _compare(
        student, teacher, labels, seed=seed, temperature=2.0, direction=direction, beta=beta, alpha_ce=0.5,
        teacher_grad=True,
    )  # fmt: skip


@pytest.mark.parametrize("direction,beta", [("forward", 0.5), ("jsd", 0.5)])
def test_large_odd_vocabulary(seed, direction, beta):
    """V = 50,021 (not a power of two) with the default launch config: 13 chunks of 4096."""
    vocab = 50_021
    assert kd_launch_config(vocab) == (4096, 16)
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 2, vocab), _randn(gen, 2, vocab)
    labels = torch.tensor([vocab - 1, 7], device=DEVICE)
    _compare(student, teacher, labels, seed=seed, temperature=2.0, direction=direction, beta=beta, alpha_ce=1.0)


def test_strided_and_mixed_dtype_inputs(seed):
    """Row-strided views (stride > V) and a non-unit column stride; bf16 student, fp32 teacher."""
    gen = torch.Generator().manual_seed(seed)
    wide = _randn(gen, 4, 200)
    student = wide[:, 10:110].to(torch.bfloat16)  # copy, contiguous; then make a row-strided view below
    padded = torch.zeros(4, 160, dtype=torch.bfloat16, device=DEVICE)
    padded[:, :100] = student
    student = padded[:, :100]  # stride(0) = 160
    teacher = _randn(gen, 100, 4).t()  # stride(-1) = 4: the host makes it contiguous
    assert student.stride(0) == 160 and teacher.stride(-1) == 4
    _compare(student, teacher, seed=seed, temperature=1.5, direction="reverse", rtol=BF16_STORE, block_v=32)


# --------------------------------------------------------------------------------------------------
# Numerical edge cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3])
def test_extreme_logits(seed, direction, beta, temperature):
    """Logits of +-1e4: near one-hot distributions, huge KL, exp() underflow in most lanes.

    Checked at scale 1, not 1e4: every exp() argument, lse gap and CE is formed from a *difference* of
    logits (exact in fp32 when they are close; the entries where it is not have probability 0), so the
    error must not grow with the logit size. Observed: <= 3.1 eps32 x max|value| over 10 seeds.
    """
    gen = torch.Generator().manual_seed(seed)
    signs = lambda: torch.randint(0, 2, (4, 97), generator=gen).double() * 2 - 1
    student = (signs() * 1e4 + torch.randn(4, 97, generator=gen, dtype=torch.float64)).float().to(DEVICE)
    teacher = (signs() * 1e4 + torch.randn(4, 97, generator=gen, dtype=torch.float64)).float().to(DEVICE)
    labels = _labels(gen, 4, 97, ignored=(3,))
    got, _, _ = _compare(
        student, teacher, labels, seed=seed, temperature=temperature, direction=direction, beta=beta,
        alpha_ce=1.0, block_v=32, scale=1.0,
    )  # fmt: skip
    assert torch.isfinite(got.loss), f"extreme logits gave {got.loss} (seed={seed})"


@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3])
def test_ties_and_identical_distributions(seed, direction, beta):
    """Uniform rows, repeated maxima across chunk borders, and student == teacher (D = 0, grad = 0)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = 70
    student = _randn(gen, 4, vocab)
    student[0] = 0.5  # uniform row
    student[1, [3, 31, 32, 69]] = student[1].max() + 2.0  # a 4-way tie for the max, across chunks
    student[2] = torch.round(student[2])  # many ties at every value
    teacher = student.clone()
    teacher[3] = _randn(gen, vocab)  # one row that differs
    got, _, grad = _compare(
        student, teacher, seed=seed, temperature=1.3, direction=direction, beta=beta, teacher_grad=True,
        block_v=32,
    )  # fmt: skip
    assert float(got.kl_rows[:3].abs().max()) < 1e-6, f"D(p, p) = {got.kl_rows[:3].tolist()} (seed={seed})"
    assert float(grad[:3].abs().max()) < 1e-7, f"nonzero gradient for identical rows (seed={seed})"
    assert float(got.kl_rows[3]) > 1e-3


def test_row_mask_and_all_masked_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 5, 50), _randn(gen, 5, 50)
    mask = torch.tensor([True, False, True, False, True], device=DEVICE)
    out_bool, grad_bool, _ = _run(student, teacher, None, mask, temperature=2.0)
    out_float, grad_float, _ = _run(student, teacher, None, mask.float(), temperature=2.0)
    assert torch.equal(out_bool.loss, out_float.loss) and torch.equal(grad_bool, grad_float)
    # batchmean over the 3 valid rows, not over all 5 (and not over sum w)
    expected = 4.0 * out_bool.kl_rows[mask].sum() / 3
    assert torch.allclose(out_bool.loss, expected, rtol=1e-6), f"seed={seed}"
    assert float(grad_bool[~mask].abs().max()) == 0.0 and float(grad_bool[mask].abs().max()) > 0
    # every row masked and every label ignored: loss 0 and zero gradient, not 0/0
    none = torch.zeros(5, device=DEVICE)
    labels = torch.full((5,), -100, device=DEVICE)
    for backend in ("triton", "reference"):
        out, grad, _ = _run(student, teacher, labels, none, alpha_ce=1.0, backend=backend)
        assert float(out.loss.detach()) == 0.0 and float(grad.abs().max()) == 0.0, f"{backend} (seed={seed})"
        assert bool((out.ce_rows == 0).all())


@pytest.mark.parametrize("dtype,rounding", [(torch.bfloat16, BF16_STORE), (torch.float16, FP16_STORE)])
@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3])
def test_half_precision_inputs(seed, dtype, rounding, direction, beta):
    """The reference sees the same half-precision values; the gradient is rounded once, at the store."""
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 4, 257, dtype=dtype), _randn(gen, 4, 257, dtype=dtype)
    labels = _labels(gen, 4, 257, ignored=(0,))
    _compare(
        student, teacher, labels, seed=seed, rtol=rounding, temperature=2.0, direction=direction, beta=beta,
        alpha_ce=0.3, teacher_grad=True, block_v=64,
    )  # fmt: skip


def _nan_pattern(out, gs, gt) -> dict[str, torch.Tensor]:
    parts = dict(loss=out.loss, kl_rows=out.kl_rows, ce_rows=out.ce_rows, student_grad=gs, teacher_grad=gt)
    return {k: torch.isnan(v.detach()).cpu() for k, v in parts.items() if v is not None}


@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3] + [("jsd", 0.0), ("jsd", 1.0)])
@pytest.mark.parametrize("side", ["student", "teacher", "both"])
def test_nan_input_gives_nan(seed, direction, beta, side):
    """A NaN logit poisons its row (divergence, gradient rows; CE if in the student) and the loss, nothing
    else; exactly where the float64 reference has NaN. The NaN sits in the second chunk of 64, the other
    rows are finite, and a third NaN row is masked by a zero weight (its 0 * NaN still reaches the loss)."""
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 4, 90), _randn(gen, 4, 90)
    col = int(torch.randint(64, 90, (1,), generator=gen))
    for side_x, x in (("student", student), ("teacher", teacher)):
        if side in (side_x, "both"):
            x[1, col] = float("nan")
    labels = torch.tensor([0, 5, -100, 7], device=DEVICE)
    kw = dict(alpha_ce=1.0, direction=direction, beta=beta, temperature=2.0, teacher_grad=True, block_v=64)
    out, gs, gt = _run(student, teacher, labels, **kw)
    msg = f"NaN in the {side} at [1, {col}] (seed={seed})"
    assert torch.isnan(out.loss), f"{msg}: loss {out.loss}"
    assert torch.isnan(out.kl_rows[1]) and bool(torch.isfinite(out.kl_rows[[0, 2, 3]]).all()), msg
    assert bool(torch.isnan(gs[1]).all()) and bool(torch.isfinite(gs[[0, 2, 3]]).all()), msg
    assert bool(torch.isnan(gt[1]).all()) and bool(torch.isfinite(gt[[0, 2, 3]]).all()), msg
    assert bool(torch.isnan(out.ce_rows[1])) == (side != "teacher"), msg
    ref = _run(student, teacher, labels, backend="reference", **kw)
    got = _nan_pattern(out, gs, gt)
    for name, want in _nan_pattern(*ref).items():
        assert torch.equal(got[name], want), f"{msg}: NaN pattern of {name} differs from the reference"
    # A NaN only in a row whose weight is 0: the loss is NaN (0 * NaN), that row's gradient too.
    masked_student = _randn(gen, 4, 90)
    masked_student[2, col] = float("nan")
    weight = torch.tensor([1.0, 0.5, 0.0, 1.0], device=DEVICE)
    out, gs, gt = _run(masked_student, teacher.nan_to_num(0.0), None, weight, **dict(kw, alpha_ce=0.0))
    assert torch.isnan(out.loss) and torch.isnan(out.kl_rows[2]), msg
    assert bool(torch.isnan(gs[2]).all()) and bool(torch.isfinite(gs[[0, 1, 3]]).all()), msg


def test_out_of_range_label(seed):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 3, 20), _randn(gen, 3, 20)
    bad = torch.tensor([0, 20, -100], device=DEVICE)
    if DEVICE == "cpu":  # the host check is free on CPU
        with pytest.raises(ValueError, match=r"labels\[1\] = 20 is outside \[0, 20\)"):
            kd_loss(student, teacher, bad, alpha_ce=1.0, backend="triton")
    # Without the host check (CUDA inputs) the kernel poisons the row instead of reading out of bounds.
    opts = _KDOptions(1.0, "forward", 0.5, True, 1.0, 1.0, -100)
    inv_n_ce = torch.tensor([0.5], device=DEVICE)
    loss, _, ce_rows, _, _ = _kd_triton_forward(student, teacher, bad, None, 1 / 3, inv_n_ce, opts, False, False)
    assert torch.isnan(ce_rows[1]) and torch.isnan(loss), f"seed={seed}"
    assert bool(torch.isfinite(ce_rows[[0, 2]]).all()) and float(ce_rows[2]) == 0.0


# --------------------------------------------------------------------------------------------------
# Autograd contract
# --------------------------------------------------------------------------------------------------


def test_gradient_buffers_are_fresh_and_inputs_untouched(seed):
    gen = torch.Generator().manual_seed(seed)
    student = _randn(gen, 3, 100).requires_grad_()
    teacher = _randn(gen, 3, 100).requires_grad_()  # requires grad, but teacher_grad=False
    before_s, before_t = student.detach().clone(), teacher.detach().clone()
    out = kd_loss(student, teacher, temperature=2.0, backend="triton", block_v=32)
    out.loss.backward()
    assert torch.equal(student.detach(), before_s) and torch.equal(teacher.detach(), before_t)
    assert student.grad.data_ptr() not in (student.data_ptr(), teacher.data_ptr())
    assert teacher.grad is None, "teacher got a gradient although teacher_grad=False"
    assert out.kl_rows.grad_fn is None and not out.kl_rows.requires_grad
    assert type(out.loss.grad_fn).__name__ == "KDFunctionBackward"


def test_second_backward_raises(seed):
    gen = torch.Generator().manual_seed(seed)
    student = _randn(gen, 2, 10).requires_grad_()
    out = kd_loss(student, _randn(gen, 2, 10), backend="triton")
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.loss.backward()


def test_no_gradient_requested_skips_buffers(seed):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 3, 40), _randn(gen, 3, 40)
    out = kd_loss(student, teacher, direction="jsd", backend="triton")
    ref = kd_reference(student.double(), teacher.double(), direction="jsd")
    assert out.loss.grad_fn is None
    _check(out.kl_rows, ref.kl_rows, what="kl_rows (no grad)", seed=seed, scale=13.0)


def test_auto_backend_and_module(seed):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = _randn(gen, 3, 30), _randn(gen, 3, 30)
    labels = _labels(gen, 3, 30)
    module = KDLoss(temperature=2.0, direction="reverse", alpha_ce=0.5)
    assert "direction='reverse'" in repr(module)
    out = module(student.requires_grad_(), teacher, labels)
    kernel_ran = type(out.loss.grad_fn).__name__ == "KDFunctionBackward"
    assert kernel_ran == (DEVICE == "cuda"), f"auto picked the wrong backend on {DEVICE}"
    ref = kd_reference(student.double(), teacher.double(), labels, temperature=2.0, direction="reverse", alpha_ce=0.5)
    _check(out.loss, ref.loss, what="KDLoss", seed=seed, scale=13.0)
    assert kd_loss(student.double(), teacher.double(), backend="auto").loss.dtype == torch.float64


def test_triton_on_cpu_without_interpreter_raises():
    """Kernels decorated in compiled mode cannot take CPU tensors: a clear error, not '0 active drivers'."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch\nfrom kernels.kd import kd_loss\n"
        "try:\n    kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), backend='triton')\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True)
    assert "needs the Triton interpreter: set TRITON_INTERPRET=1" in result.stdout, result.stderr[-2000:]


_COMPILE_SCRIPT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import kd as m

def sig(fn, ptrs):
    cx = {p.name for p in fn.params if p.is_constexpr}
    return {n: ptrs.get(n, "constexpr" if n in cx else "i32") for n in fn.arg_names}

fwd = sig(m._kd_fwd_kernel, {
    "s_ptr": "*bf16", "t_ptr": "*fp16", "ds_ptr": "*bf16", "dt_ptr": "*fp16", "labels_ptr": "*i64",
    "row_coef_ptr": "*fp32", "inv_n_ce_ptr": "*fp32", "kl_rows_ptr": "*fp32", "ce_rows_ptr": "*fp32",
    "loss_rows_ptr": "*fp32", "inv_T": "fp32", "kd_const": "fp32", "alpha_ce": "fp32", "beta": "fp32",
    "log_beta": "fp32", "log_1m_beta": "fp32"})
for direction in (0, 1, 2):
    cx = dict(DIRECTION=direction, HAS_ROW_COEF=True, HAS_LABELS=True, CE_GRAD=True, STUDENT_GRAD=True,
              TEACHER_GRAD=True, BLOCK_V=4096)
    ptx = triton.compile(ASTSource(fn=m._kd_fwd_kernel, signature=fwd, constexprs=cx),
                         target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    print("nan-tests", direction, len(re.findall(r"setp\.(?:nan|neu)\.", ptx)))
scale = sig(m._scale_rows_kernel, {"x_ptr": "*bf16", "scale_ptr": "*fp32"})
triton.compile(ASTSource(fn=m._scale_rows_kernel, signature=scale, constexprs=dict(BLOCK_V=4096)),
               target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_kernels_compile_for_sm90_with_explicit_nan_tests():
    """Build sm_90 code offline (triton ships ptxas; no GPU needed): the interpreter does not type-check
    like the compiler, and the explicit NaN test (x != x) must survive into the PTX as setp.nan/neu (no
    fast-math folding it away), since compiled max/min drop NaN."""
    import shutil

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and shutil.which("ptxas") is None:
        pytest.skip("triton's bundled ptxas is not available")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), "xdist-kd-triton-cache")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    counts = [int(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("nan-tests")]
    assert len(counts) == 3 and min(counts) > 0, proc.stdout


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(direction="kl"), "direction must be one of"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(beta=1.5), r"beta must be in \[0, 1\]"),
        (dict(alpha_ce=1.0), "alpha_ce=1.0 needs hard labels"),
        (dict(alpha_kl=-1.0), "must be >= 0"),
        (dict(backend="cuda"), "backend must be"),
    ],
)
def test_bad_options_raise(kwargs, match):
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=match):
        kd_loss(x, x, **kwargs)


def test_bad_shapes_raise():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"student_logits \(2, 5\) and teacher_logits \(2, 6\) differ"):
        kd_loss(x, torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"must be 2-D \[N, V\]"):
        kd_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(2,\)"):
        kd_loss(x, x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"row_weight must have shape \(2,\)"):
        kd_loss(x, x, row_weight=torch.ones(3))


# --------------------------------------------------------------------------------------------------
# The reference itself
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction,beta", DIRECTIONS + [("jsd", 0.0)])
def test_reference_gradcheck(seed, direction, beta):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([4, -100, 0])
    weight = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)

    def loss(s, t):
        return kd_reference(
            s, t, labels, weight, temperature=1.7, direction=direction, beta=beta, alpha_ce=0.6,
            teacher_grad=True,
        ).loss  # fmt: skip

    assert torch.autograd.gradcheck(loss, (student, teacher)), f"seed={seed}"


def test_reference_matches_textbook_formulas(seed):
    """Independent formulas: T^2 * KLDivLoss(batchmean) (Hinton / DistillKit) and scipy's JS distance."""
    from scipy.spatial.distance import jensenshannon

    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 2
    temp = 2.0
    hinton = F.kl_div(F.log_softmax(student / temp, -1), F.softmax(teacher / temp, -1), reduction="batchmean")
    fwd = kd_reference(student, teacher, temperature=temp).loss
    assert torch.allclose(fwd, temp**2 * hinton, rtol=1e-12), f"seed={seed}"
    rev = kd_reference(student, teacher, temperature=temp, direction="reverse", t2_scaling=False).loss
    rev_textbook = F.kl_div(F.log_softmax(teacher / temp, -1), F.softmax(student / temp, -1), reduction="batchmean")
    assert torch.allclose(rev, rev_textbook, rtol=1e-12), f"seed={seed}"
    rows = kd_reference(student, teacher, direction="jsd", beta=0.5).kl_rows
    p_rows, q_rows = F.softmax(teacher, -1).numpy(), F.softmax(student, -1).numpy()
    scipy_rows = torch.tensor([jensenshannon(p, q) ** 2 for p, q in zip(p_rows, q_rows, strict=True)])
    assert torch.allclose(rows, scipy_rows, rtol=1e-9), f"seed={seed}"
    labels = torch.tensor([0, 3, -100, 10, 2, 2])
    ce = kd_reference(student, teacher, labels, alpha_kl=0.0, alpha_ce=1.0).loss
    assert torch.allclose(ce, F.cross_entropy(student, labels, ignore_index=-100), rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# GPU only
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("direction,beta", DIRECTIONS[:3])
def test_xlmr_vocabulary_bf16_on_gpu(seed, direction, beta):
    """V = 250,002 (XLM-R) x 64 rows in bf16 with the default launch config, vs float64 on the GPU."""
    gen = torch.Generator().manual_seed(seed)
    vocab = 250_002
    student, teacher = _randn(gen, 64, vocab, dtype=torch.bfloat16), _randn(gen, 64, vocab, dtype=torch.bfloat16)
    labels = _labels(gen, 64, vocab, ignored=(5, 17))
    _compare(
        student, teacher, labels, seed=seed, rtol=BF16_STORE, temperature=2.0, direction=direction, beta=beta,
        alpha_ce=0.5, teacher_grad=True,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int64_row_offsets_on_gpu(seed):
    """8,600 x 250,002 bf16: row * stride passes 2^31 elements, the last rows must still be right."""
    vocab, n_rows = 250_002, 8_600
    assert (n_rows - 1) * vocab > 2**31
    if torch.cuda.mem_get_info()[0] < 16 * 2**30:
        pytest.skip("needs 16 GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    student = torch.randn(n_rows, vocab, device="cuda", generator=gen, dtype=torch.bfloat16)
    teacher = torch.randn(n_rows, vocab, device="cuda", generator=gen, dtype=torch.bfloat16)
    out = kd_loss(student.requires_grad_(), teacher, temperature=2.0)
    out.loss.backward()
    tail = slice(n_rows - 3, n_rows)
    ref, rs, _ = _run(student[tail], teacher[tail], backend="reference", temperature=2.0)
    _check(out.kl_rows[tail], ref.kl_rows, what="kl_rows of the last rows", seed=seed, scale=12.0)
    # The reference normalised by 3 rows, the full loss by n_rows.
    _check(student.grad[tail] * (n_rows / 3), rs, what="grad of the last rows", seed=seed, scale=12.0, rtol=BF16_STORE)
