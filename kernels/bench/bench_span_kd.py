"""Benchmark of the fused span KD loss (kernels/span_kd.py) against eager and compiled PyTorch.

Providers (anchors.md §1.3): ``torch`` = eager ``span_kd_reference``, ``compile`` =
``torch.compile(reference, dynamic=False)``, ``xdist`` = the Triton kernel (CUDA only: under the
CPU interpreter its timings would mean nothing). Modes: ``forward`` (student requires grad, as in
training; the kernel computes dS here) and ``full`` (forward + backward). Metrics: time per call
(p50/p20/p80 µs), CUDA kernel launches, peak extra CUDA memory.

Span KD is launch-bound at QA sizes (anchors.md §1.4): B=32, L=384 is ~200 KB of traffic, far below
the cost of one launch, so µs per call and launch counts are the numbers to compare, not GB/s.

    .venv/bin/python -m kernels.bench.bench_span_kd            # quick sweep on CPU, full on CUDA
    .venv/bin/python -m kernels.bench.bench_span_kd --full --out docs/benchmarks/span_kd_h100.csv

Writes the CSV (harness columns), a PNG plot and a Markdown table next to it, and prints the table.
"""

import argparse
import datetime as _dt
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from kernels.bench import harness
from kernels.span_kd import span_kd_loss, span_kd_reference

KERNEL = "span_kd"
# The authors' SKD + mAP@10 configuration (methods.md §A.4, §A.7).
OPTIONS = dict(temperature=2.0, k=10, window=5, coef="map", scope="batch", alpha_ce=1.0, direction="forward")
FULL_B = (8, 32, 128, 512)
FULL_L = (384, 1024, 4096)
QUICK_B = (8, 32, 128)
QUICK_L = (384,)


def make_inputs(B: int, L: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(B, 2, L, generator=gen) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    teacher = (student.detach().float() + torch.randn(B, 2, L, generator=gen).to(device)).to(dtype)
    gold = torch.randint(0, L, (B, 2), generator=gen).to(device)
    return student, teacher, gold


def reference_loss(student, teacher, gold):
    # validate=False: the data-dependent checks need host syncs and break torch.compile graphs
    return span_kd_reference(student, teacher, gold, validate=False, **OPTIONS).loss


def xdist_loss(student, teacher, gold):
    return span_kd_loss(student, teacher, gold, backend="triton", validate=False, **OPTIONS).loss


def loss_fn_for(provider: str) -> Callable:
    if provider == "torch":
        return reference_loss
    if provider == "compile":
        return torch.compile(reference_loss, dynamic=False)
    if provider == "xdist":
        return xdist_loss
    raise ValueError(f"unknown provider {provider!r}")


def bench_point(provider: str, B: int, L: int, dtype: torch.dtype, device: str, warmup: int, reps: int):
    """All metrics of one (provider, B, L) point as harness rows."""
    if provider == "compile":
        torch._dynamo.reset()  # one shape per compile cache: no recompile-limit fallbacks to eager
    loss_fn = loss_fn_for(provider)
    student, teacher, gold = make_inputs(B, L, dtype, device)

    def forward():
        return loss_fn(student, teacher, gold)

    def full():
        loss = loss_fn(student, teacher, gold)
        loss.backward()
        student.grad = None
        return loss

    extra = {"L": L, "dtype": str(dtype).removeprefix("torch."), "coef": OPTIONS["coef"]}
    common = dict(kernel=KERNEL, provider=provider, x_name="B", x_value=B, extra_config=extra)
    rows = []
    for mode, fn in (("forward", forward), ("full", full)):
        p50, p20, p80 = harness.time_call(fn, warmup=warmup, reps=reps)
        rows.append(harness.bench_row(mode=mode, metric="time", unit="us", p50=p50, p20=p20, p80=p80, **common))
        launches = harness.count_launches(fn)
        rows.append(harness.bench_row(mode=mode, metric="launches", unit="count", p50=launches, **common))
    memory = harness.peak_extra_memory(full)
    rows.append(harness.bench_row(mode="full", metric="memory", unit="bytes", p50=memory, **common))
    return rows


def _fmt(value) -> str:
    if value in (None, "", "None"):
        return "–"
    value = float(value)
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows) -> str:
    """Markdown table: one line per (L, B, provider)."""
    index: dict[tuple, dict] = {}
    for r in rows:
        key = (r["extra_config"], int(r["x_value"]), r["provider"])
        index.setdefault(key, {})[(r["mode"], r["metric"])] = r
    head = ("| L | B | provider | fwd p50 µs (p20–p80) | fwd+bwd p50 µs (p20–p80) | launches fwd / fwd+bwd "
            "| peak extra MB |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for (extra, B, provider), cells in sorted(index.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        L = dict(kv.split("=") for kv in extra.split(";"))["L"]

        def timing(mode, cells=cells):
            r = cells.get((mode, "time"))
            return f"{_fmt(r['p50'])} ({_fmt(r['p20'])}–{_fmt(r['p80'])})" if r else "–"

        launches = " / ".join(_fmt(cells.get((m, "launches"), {}).get("p50")) for m in ("forward", "full"))
        mem = cells.get(("full", "memory"), {}).get("p50")
        mem_mb = "–" if mem in (None, "", "None") else f"{float(mem) / 2**20:.2f}"
        lines.append(f"| {L} | {B} | {provider} | {timing('forward')} | {timing('full')} | {launches} | {mem_mb} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=not cuda,
                      help=f"B in {QUICK_B}, L in {QUICK_L} (default on CPU)")
    size.add_argument("--full", dest="quick", action="store_false",
                      help=f"B in {FULL_B}, L in {FULL_L} (default on CUDA)")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV path (default docs/benchmarks/span_kd_<cpu|cuda>.csv); .png and .md beside it")
    parser.add_argument("--append", action="store_true", help="append to the CSV instead of replacing it")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16" if cuda else "fp32")
    parser.add_argument("--providers", default=None, help="comma list of torch,compile,xdist")
    parser.add_argument("--warmup", type=int, default=25 if cuda else 5)
    parser.add_argument("--reps", type=int, default=200 if cuda else 50)
    parser.add_argument("--threads", type=int, default=None if cuda else 1,
                        help="torch CPU threads (default 1 on CPU: less noise on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = "cuda" if cuda else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    providers = args.providers.split(",") if args.providers else (["torch", "compile", "xdist"] if cuda
                                                                  else ["torch", "compile"])
    if "xdist" in providers and not cuda:
        raise SystemExit("bench_span_kd: the xdist (Triton) provider needs CUDA")
    if not cuda:
        print("bench_span_kd: no CUDA device: running the torch and compile columns only; the Triton "
              "(xdist) column needs CUDA (interpreter timings are meaningless).", file=sys.stderr)
    out = args.out or Path("docs/benchmarks") / f"span_kd_{device}.csv"
    if out.exists() and not args.append:
        out.unlink()
    B_values, L_values = (QUICK_B, QUICK_L) if args.quick else (FULL_B, FULL_L)

    all_rows = []
    for L in L_values:
        for B in B_values:
            for provider in providers:
                rows = bench_point(provider, B, L, dtype, device, args.warmup, args.reps)
                harness.append_csv(out, rows)
                all_rows += rows
                t = {r["mode"]: r["p50"] for r in rows if r["metric"] == "time"}
                print(f"L={L:5d} B={B:4d} {provider:8s} fwd {t['forward']:10.1f} us  fwd+bwd {t['full']:10.1f} us",
                      flush=True)
    harness.plot(out, out.with_suffix(".png"), kernel=KERNEL)
    md = table(all_rows)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python -m kernels.bench.bench_span_kd", *(argv if argv is not None else sys.argv[1:])])
    header = (
        f"# span_kd benchmark ({device})\n\n"
        f"- date: {stamp}\n- device: {harness.device_description()}\n- versions: {harness.versions()}\n"
        f"- command: `{command}`\n"
        f"- options: {OPTIONS}, dtype {args.dtype}, warmup {args.warmup}, reps {args.reps}, "
        f"OMP/torch threads {torch.get_num_threads()}\n"
        f"- data: `{out.name}` (all rows), plot `{out.with_suffix('.png').name}`\n\n"
    )
    if not cuda:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        header += (f"Shared machine: load average (1/5/15 min) {load} when the run ended, so the p20-p80 bands "
                   "are wide.\n\n")
        header += ("No CUDA device: the xdist (Triton) column, launch counts and CUDA memory need a GPU; "
                   "the CPU columns show what the PyTorch reference costs on this machine.\n\n")
    out.with_suffix(".md").write_text(header + md + "\n", encoding="utf-8")
    print()
    print(md)
    print(f"\nwrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    raise SystemExit(main())
