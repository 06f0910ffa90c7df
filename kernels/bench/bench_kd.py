"""Benchmark the vocabulary-scale KD loss (kernels/kd.py): eager reference, torch.compile, Triton.

Providers (anchors.md 1.3): ``torch`` = :func:`kernels.kd.kd_reference` in eager mode, ``compile`` =
``torch.compile(kd_reference, dynamic=False)``, ``xdist`` = the Triton kernel (CUDA only; on CPU the
Triton interpreter runs ~3.5 ms per program instance and would measure numpy, so the column is left
out). Modes: ``forward`` (the training forward: inputs require grad, so the kernel also writes dS)
and ``full`` (forward + backward, gradient returned by ``torch.autograd.grad``).

Metrics per point: time p50/p20/p80 in us, CUDA kernel launches, peak extra CUDA memory, and for
``full`` the effective bandwidth

    GB/s = (bytes(s) + bytes(t) + bytes(dS)) / time      (6 B/element in bf16: the minimum traffic)

next to a measured copy bandwidth (``x.clone()`` of a large tensor: 2 x bytes / time) as "% copy".
Points that run out of memory are recorded with empty values and shown as OOM.

Usage::

    python -m kernels.bench.bench_kd                 # full sweep on CUDA, --quick sizes on CPU
    python -m kernels.bench.bench_kd --quick         # tiny sizes (CPU default)
    python -m kernels.bench.bench_kd --rows 4096 --vocab 250002 --block-v 2048 --num-warps 8

Writes ``<out>/kd_<cpu|cuda>.csv`` (harness columns), ``.png`` and ``.md`` (date, device, versions,
table); ``--out`` defaults to docs/benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
from pathlib import Path

import torch

from kernels.bench import harness
from kernels.kd import kd_launch_config, kd_loss, kd_reference

REPO = Path(__file__).resolve().parents[2]
FULL_ROWS = (1024, 4096, 16384)
FULL_VOCAB = (32_000, 128_000, 250_002)
QUICK_ROWS = (64, 256)
QUICK_VOCAB = (1024, 8192)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def copy_bandwidth_gbs(device: str, n_bytes: int) -> tuple[float, float, float]:
    """(p50, p20, p80) GB/s of ``x.clone()``: it reads and writes ``n_bytes`` each."""
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    p50, p20, p80 = harness.time_call(x.clone, warmup=3, reps=20)
    return tuple(2 * x.numel() * 4 / (us * 1e-6) / 1e9 for us in (p50, p80, p20))  # fast time = high GB/s


def _loss_fn(provider: str, options: dict, launch: dict):
    if provider == "torch":
        return lambda s, t: kd_reference(s, t, **options).loss
    if provider == "compile":
        return torch.compile(lambda s, t: kd_reference(s, t, **options).loss, dynamic=False)
    return lambda s, t: kd_loss(s, t, backend="triton", **options, **launch).loss


def bench_point(provider: str, rows: int, vocab: int, args, copy_gbs: float) -> list[dict]:
    """All CSV rows of one (provider, rows, vocab) point; empty values where it ran out of memory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    options = dict(temperature=args.temperature, direction=args.direction)
    launch = dict(block_v=args.block_v, num_warps=args.num_warps)
    block_v, num_warps = kd_launch_config(vocab)
    extra = dict(rows=rows, dtype=args.dtype, direction=args.direction, T=args.temperature)
    if provider == "xdist":
        extra.update(block_v=args.block_v or block_v, num_warps=args.num_warps or num_warps)
    row = functools.partial(harness.bench_row, kernel="kd", provider=provider, x_name="V", x_value=vocab)
    out: list[dict] = []
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        student = torch.randn(rows, vocab, device=device, dtype=dtype, generator=gen).requires_grad_()
        teacher = torch.randn(rows, vocab, device=device, dtype=dtype, generator=gen)
        loss_fn = _loss_fn(provider, options, launch)
        modes = {
            "forward": lambda: loss_fn(student, teacher),
            "full": lambda: torch.autograd.grad(loss_fn(student, teacher), student)[0],
        }
        ideal_bytes = rows * vocab * (2 * student.element_size() + teacher.element_size())
        for mode, fn in modes.items():
            p50, p20, p80 = harness.time_call(fn, warmup=args.warmup, reps=args.reps)
            out.append(row(mode=mode, metric="time", unit="us", p50=p50, p20=p20, p80=p80, extra_config=extra))
            launches, memory = harness.count_launches(fn), harness.peak_extra_memory(fn)
            out.append(row(mode=mode, metric="launches", unit="count", p50=launches, extra_config=extra))
            out.append(row(mode=mode, metric="memory", unit="bytes", p50=memory, extra_config=extra))
            if mode == "full":
                gbs = [ideal_bytes / (us * 1e-6) / 1e9 for us in (p50, p80, p20)]
                out.append(row(mode=mode, metric="bandwidth", unit="GB/s", p50=gbs[0], p20=gbs[1], p80=gbs[2],
                               extra_config=extra))  # fmt: skip
                out.append(row(mode=mode, metric="pct_copy", unit="%", p50=100 * gbs[0] / copy_gbs, extra_config=extra))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        extra["oom"] = True
        for mode in ("forward", "full"):
            out.append(row(mode=mode, metric="time", unit="us", p50=None, extra_config=extra))
    finally:
        student = teacher = None  # noqa: F841 - free before the next point
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def _load_average() -> str:
    """Other processes on a shared machine inflate CPU timings; the .md says how busy it was."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _fmt(value: str, digits: int = 0) -> str:
    if value in ("", "None"):
        return "-"
    return f"{float(value):,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per (provider, rows, V, mode): time p50 (p20-p80), launches, memory, GB/s, % copy."""
    points: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["kernel"] != "kd":
            continue
        cfg = dict(kv.split("=", 1) for kv in str(r["extra_config"]).split(";"))
        key = (int(cfg["rows"]), int(r["x_value"]), r["mode"], r["provider"])
        points.setdefault(key, {"oom": "oom" in cfg})[r["metric"]] = {k: str(r[k]) for k in ("p50", "p20", "p80")}
    lines = [
        "| rows | V | mode | provider | p50 us (p20-p80) | launches | peak extra MB | GB/s | % copy |",
        "|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for (n_rows, vocab, mode, provider), m in sorted(points.items()):
        if m["oom"]:
            lines.append(f"| {n_rows} | {vocab} | {mode} | {provider} | OOM | - | - | - | - |")
            continue
        t = m["time"]
        mem = m.get("memory", {}).get("p50", "")
        mem_mb = "-" if mem in ("", "None") else f"{float(mem) / 2**20:,.0f}"
        lines.append(
            f"| {n_rows} | {vocab} | {mode} | {provider} | {_fmt(t['p50'])} ({_fmt(t['p20'])}-{_fmt(t['p80'])}) | "
            f"{_fmt(m.get('launches', {}).get('p50', ''))} | {mem_mb} | "
            f"{_fmt(m.get('bandwidth', {}).get('p50', ''), 1)} | {_fmt(m.get('pct_copy', {}).get('p50', ''), 1)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action=argparse.BooleanOptionalAction, default=not cuda,
                        help=f"tiny sweep rows={QUICK_ROWS} V={QUICK_VOCAB} (default without CUDA)")  # fmt: skip
    parser.add_argument("--rows", type=int, nargs="+", help=f"rows to sweep (full: {FULL_ROWS})")
    parser.add_argument("--vocab", type=int, nargs="+", help=f"vocabulary sizes (full: {FULL_VOCAB})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16" if cuda else "fp32")
    parser.add_argument("--direction", choices=("forward", "reverse", "jsd"), default="forward")
    parser.add_argument("--temperature", type=float, default=2.0)
    default_providers = ["torch", "compile", "xdist"] if cuda else ["torch", "compile"]
    parser.add_argument("--providers", nargs="+", choices=("torch", "compile", "xdist"), default=default_providers)
    parser.add_argument("--block-v", type=int, default=None, help="override the kernel's BLOCK_V heuristic")
    parser.add_argument("--num-warps", type=int, default=None, help="override the kernel's num_warps heuristic")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10 CUDA, 3 CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls (default 50 CUDA, 30 CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None if cuda else 1,
        help="torch intra-op threads (CPU default 1: on a shared machine, OpenMP barriers between busy cores "
        "turn a 0.1 ms op into 100 ms; recorded in the device string)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--append", action="store_true", help="append to the CSV instead of replacing it")
    args = parser.parse_args(argv)
    if "xdist" in args.providers and not cuda:
        parser.error("provider 'xdist' (Triton) needs CUDA; on CPU only 'torch' and 'compile' are measured")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    args.reps = args.reps if args.reps is not None else (50 if cuda else 30)
    row_sweep = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    vocab_sweep = args.vocab or (QUICK_VOCAB if args.quick else FULL_VOCAB)

    device = "cuda" if cuda else "cpu"
    stem = args.out / f"kd_{device}"
    csv_path = stem.with_suffix(".csv")
    if csv_path.exists() and not args.append:
        csv_path.unlink()
    copy_bytes = 2**30 if cuda else 2**28
    copy_gbs = copy_bandwidth_gbs(device, copy_bytes)
    rows = [
        harness.bench_row(kernel="kd_copy", provider="torch", mode="clone", metric="bandwidth", unit="GB/s",
                          x_name="bytes", x_value=copy_bytes, p50=copy_gbs[0], p20=copy_gbs[1], p80=copy_gbs[2])
    ]  # fmt: skip
    print(f"{harness.device_description()}\ncopy bandwidth (clone of {copy_bytes >> 20} MiB): {copy_gbs[0]:.1f} GB/s")
    for n_rows in row_sweep:
        for vocab in vocab_sweep:
            for provider in args.providers:
                point = bench_point(provider, n_rows, vocab, args, copy_gbs[0])
                rows.extend(point)
                t = next((r for r in point if r["metric"] == "time" and r["mode"] == "full"), None)
                p50 = "OOM" if t is None or t["p50"] is None else f"{t['p50']:,.0f} us"
                print(f"rows={n_rows:>6} V={vocab:>7} {provider:>8}: full {p50}", flush=True)
    harness.append_csv(csv_path, rows)
    harness.plot(csv_path, stem.with_suffix(".png"), kernel="kd")
    table = markdown_table(harness.read_csv(csv_path))
    note = (
        "Triton (`xdist`) column: needs CUDA, not measured on this machine (the Triton interpreter would time numpy)."
        if "xdist" not in args.providers
        else ""
    )
    command = " ".join(["python -m kernels.bench.bench_kd", *(argv if argv is not None else sys.argv[1:])])
    stem.with_suffix(".md").write_text(
        f"# KD loss benchmark ({device})\n\n"
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n"
        f"- device: {harness.device_description()}\n"
        f"- versions: {harness.versions()}\n"
        f"- load average at the end (1/5/15 min): {_load_average()}\n"
        f"- command: `{command}`\n"
        f"- inputs: student and teacher logits [rows, V] {args.dtype}, student requires grad; "
        f"direction={args.direction}, T={args.temperature}, T^2 scaling, no labels\n"
        f"- GB/s = (bytes(s) + bytes(t) + bytes(dS)) / time of forward+backward (the minimum traffic); "
        f"% copy = that / measured clone bandwidth ({copy_gbs[0]:.1f} GB/s, 2 x {copy_bytes >> 20} MiB / time)\n"
        f"- launches and peak extra memory come from CUDA (torch.profiler, max_memory_allocated): "
        f"'-' on CPU\n"
        f"- % copy above 100 means the tensors fit in cache while the clone reference streams from DRAM; "
        f"the figure is meaningful for tensors much larger than the last-level cache\n"
        + (f"- {note}\n" if note else "")
        + f"\n{table}\n",
        encoding="utf-8",
    )
    print(table)
    print(f"wrote {csv_path}, {stem.with_suffix('.png')}, {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
