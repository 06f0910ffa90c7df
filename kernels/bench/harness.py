"""Shared benchmark harness for the xdist kernels (span KD, vocabulary KD, ...).

Modelled on Liger-Kernel's ``benchmark/scripts/utils.py``: quantile timings (p50, p20, p80), kernel
launch counts from the torch profiler, peak extra CUDA memory, one CSV with Liger-like columns and a
plot of it. Everything degrades gracefully on a machine without CUDA: timings use ``perf_counter``,
launch counts and CUDA memory are ``None``.

Public API (kept stable; other benchmark scripts import it)::

    time_call(fn, warmup=10, reps=50) -> (p50_us, p20_us, p80_us)
    count_launches(fn, include_copies=False) -> int | None
    peak_extra_memory(fn) -> int | None            # bytes
    bench_row(kernel=..., provider=..., ...) -> dict  # one CSV row, device/timestamp/versions filled
    append_csv(path, rows) -> None
    plot(csv_path, out_png, kernel=None) -> None
    device_description() -> str
    versions() -> str
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

CSV_COLUMNS: tuple[str, ...] = (
    "kernel",  # e.g. "span_kd"
    "provider",  # "torch" (eager reference), "compile" (torch.compile of it), "xdist" (Triton)
    "mode",  # "forward", "full" (forward + backward), ...
    "metric",  # "time", "launches", "memory"
    "unit",  # "us", "count", "bytes"
    "x_name",  # swept variable, e.g. "B"
    "x_value",
    "p50",
    "p20",
    "p80",
    "extra_config",  # the fixed parameters of the point, e.g. "L=384;dtype=bf16"
    "device",
    "timestamp",
    "versions",
)

QUANTILES = (0.5, 0.2, 0.8)


def _cuda_in_use() -> bool:
    return torch.cuda.is_available()


def _quantiles_us(samples_us: list[float]) -> tuple[float, float, float]:
    """(p50, p20, p80) of the samples, linear interpolation between order statistics."""
    if len(samples_us) == 1:
        return samples_us[0], samples_us[0], samples_us[0]
    # statistics.quantiles with n=100 gives the 1st..99th percentiles ("inclusive" interpolates
    # between the observed minimum and maximum, like numpy's default).
    pct = statistics.quantiles(samples_us, n=100, method="inclusive")
    return pct[49], pct[19], pct[79]


def time_call(fn: Callable[[], Any], warmup: int = 10, reps: int = 50) -> tuple[float, float, float]:
    """Time ``fn()`` and return its (p50, p20, p80) in microseconds per call.

    On CUDA every repetition is bracketed by its own pair of CUDA events, so a call's time includes
    any launch gaps the host leaves inside it (this is what a training step pays for a
    launch-bound op). The L2 cache is not flushed between calls: span/KD logits are consumed right
    after the model wrote them. On CPU each call is timed with ``time.perf_counter``.
    """
    if reps < 1:
        raise ValueError(f"time_call: reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if _cuda_in_use():
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends, strict=True):
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=True)]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
    return _quantiles_us(samples)


def _is_device_kernel(evt: Any, include_copies: bool) -> bool:
    from torch.autograd import DeviceType

    if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
        return False
    kind = getattr(evt, "activity_type", None)
    if kind:  # kineto activity names: "kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation"
        return kind == "kernel" or (include_copies and kind in ("gpu_memcpy", "gpu_memset"))
    is_copy = evt.name.startswith(("Memcpy", "Memset"))
    return include_copies or not is_copy


def count_launches(fn: Callable[[], Any], include_copies: bool = False) -> int | None:
    """Number of CUDA kernels one call of ``fn()`` runs, from the torch profiler (None without CUDA).

    ``fn`` is called once before profiling so that one-time work (autotuning, compilation, caches)
    is not counted. Memcpy/memset operations are counted only with ``include_copies=True``.
    """
    if not _cuda_in_use():
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for evt in prof.events() if _is_device_kernel(evt, include_copies))


def peak_extra_memory(fn: Callable[[], Any]) -> int | None:
    """Peak CUDA memory allocated during one call of ``fn()`` above what was allocated before it,
    in bytes (None without CUDA). What ``fn`` returns is held until the peak is read, so outputs
    and saved-for-backward buffers count."""
    if not _cuda_in_use():
        return None
    fn()  # warm caches / compilation outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def versions() -> str:
    """'torch=...;triton=...;xdist=...' (read from package metadata; triton is not imported)."""
    return ";".join(f"{name}={_version(name)}" for name in ("torch", "triton", "xdist"))


def device_description() -> str:
    """A short human-readable description of the device the benchmark runs on."""
    if _cuda_in_use():
        idx = torch.cuda.current_device()
        prop = torch.cuda.get_device_properties(idx)
        return (
            f"{prop.name} (sm_{prop.major}{prop.minor}, {prop.multi_processor_count} SMs, "
            f"{prop.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
        )
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores, torch threads={torch.get_num_threads()}"


def bench_row(
    *,
    kernel: str,
    provider: str,
    mode: str,
    metric: str,
    unit: str,
    x_name: str,
    x_value: Any,
    p50: float | int | None,
    p20: float | int | None = None,
    p80: float | int | None = None,
    extra_config: str | Mapping[str, Any] = "",
) -> dict[str, Any]:
    """One CSV row; p20/p80 default to p50 (for counts), device/timestamp/versions are filled in."""
    if isinstance(extra_config, Mapping):
        extra_config = ";".join(f"{k}={v}" for k, v in extra_config.items())
    return {
        "kernel": kernel,
        "provider": provider,
        "mode": mode,
        "metric": metric,
        "unit": unit,
        "x_name": x_name,
        "x_value": x_value,
        "p50": p50,
        "p20": p50 if p20 is None else p20,
        "p80": p50 if p80 is None else p80,
        "extra_config": extra_config,
        "device": device_description(),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def append_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to a CSV with ``CSV_COLUMNS`` (header written when the file is new or empty).

    A row with a missing or unknown column is an error rather than a silently shifted table.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = set(CSV_COLUMNS) - set(row)
        unknown = set(row) - set(CSV_COLUMNS)
        if missing or unknown:
            raise ValueError(
                f"append_csv({path}): row {i} has missing columns {sorted(missing)} "
                f"and unknown columns {sorted(unknown)}; expected exactly {list(CSV_COLUMNS)}"
            )
    new_file = not path.exists() or path.stat().st_size == 0
    if not new_file:
        with path.open(encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"append_csv: {path} has header {header}, expected {list(CSV_COLUMNS)}")
    with path.open("a", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def plot(csv_path: str | os.PathLike[str], out_png: str | os.PathLike[str], kernel: str | None = None) -> None:
    """Plot p50 (line) with the p20–p80 band against x_value.

    One panel per (kernel, mode, metric); one line per (provider, extra_config). Rows whose p50 is
    empty (e.g. launch counts on CPU) are left out. Log-log axes for time and memory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_csv(csv_path) if r["p50"] not in ("", "None")]
    if kernel is not None:
        rows = [r for r in rows if r["kernel"] == kernel]
    if not rows:
        raise ValueError(f"plot: no plottable rows in {csv_path} (kernel={kernel!r})")
    panels: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        panels.setdefault((r["kernel"], r["mode"], r["metric"]), []).append(r)
    n = len(panels)
    ncols = min(n, 2)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax, ((kern, mode, metric), prow) in zip(axes.flat, sorted(panels.items()), strict=False):
        lines: dict[tuple[str, str], list[dict[str, str]]] = {}
        for r in prow:
            lines.setdefault((r["provider"], r["extra_config"]), []).append(r)
        for (provider, extra), lrows in sorted(lines.items()):
            lrows.sort(key=lambda r: float(r["x_value"]))
            xs = [float(r["x_value"]) for r in lrows]
            p50 = [float(r["p50"]) for r in lrows]
            p20 = [float(r["p20"]) for r in lrows]
            p80 = [float(r["p80"]) for r in lrows]
            (line,) = ax.plot(xs, p50, marker="o", label=f"{provider} {extra}".strip())
            ax.fill_between(xs, p20, p80, color=line.get_color(), alpha=0.2)
        ax.set_xscale("log", base=2)
        if metric in ("time", "memory"):
            ax.set_yscale("log")
        ax.set_xlabel(prow[0]["x_name"])
        ax.set_ylabel(f"{metric} [{prow[0]['unit']}]")
        ax.set_title(f"{kern} — {mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(rows[0]["device"], fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
