"""The GPU check: one command that measures the kernels and the engine on an H100/H200 in minutes and
writes one dated report with the performance targets (issue 12) as measured / target.

    kernels/bench/gpu_check.sh                    # installs the carried wheels if needed, then this
    python -m kernels.bench.gpu_check             # on a CUDA machine: everything, report in docs/benchmarks/
    python -m kernels.bench.gpu_check --dry-run   # on CPU: the same plumbing, tiny shapes (CI runs this)

Sections (``--sections`` picks some; each records its own wall time in the report):

* ``pytest``: ``pytest -m gpu tests/kernels`` (compiled kernels vs the float64 references);
* ``span``: span-KD forward+backward, B x L in {8, 64, 512} x {384, 4096}, bf16: µs p50 (p20/p80) of the
  Triton kernel, the eager reference and ``torch.compile`` of it; launches per fwd+bwd (profiler); peak
  extra memory (``kernels.bench.bench_span_kd``);
* ``kd``: vocabulary KD forward+backward, rows x V in {1k, 8k} x {32k, 250,002}, bf16: µs, GB/s against
  the copy bandwidth measured in the same run, peak extra memory vs eager and compile
  (``kernels.bench.bench_kd``);
* ``train``: XLM-R-large-shaped QA model (random init, seq 384, bf16, ZeRO-2, 1 GPU): xdist vs Hugging
  Face Trainer + DeepSpeed on the same model, batch and data (samples/s, tokens/s, MFU), and an SKD epoch
  with the teacher-logit cache vs a plain CE epoch (``kernels.bench.gpu_check_train``).

``--dry-run`` runs every section on CPU with tiny shapes: the Triton kernels under ``TRITON_INTERPRET=1``,
``torch.compile`` skipped, DeepSpeed on its CPU accelerator. Its figures check the plumbing and say
nothing about performance; its report goes to ``runs/gpu-check-dry-run/`` unless ``--out`` says otherwise.

This is a benchmark tool, outside the library's layering (it drives ``xdist`` for the training sections).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("pytest", "span", "kd", "train")
SPAN_GRID = dict(B=(8, 64, 512), L=(384, 4096))
KD_GRID = dict(rows=(1024, 8192), V=(32_000, 250_002))
DRY_SPAN_GRID = dict(B=(2, 3), L=(16,))
DRY_KD_GRID = dict(rows=(2,), V=(40,))
# Dense bf16 peak (TFLOP/s) from the vendors' data sheets, for MFU; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "GH200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
                    "A100": 312.0, "L40S": 362.0}


@dataclass
class Target:
    """One line of the targets table: ``measured`` stays None when the section did not run."""

    name: str
    target: str
    measured: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    dry_run: bool
    started: float = field(default_factory=time.time)
    sections: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """Device, driver and versions, for the report header."""
    import torch

    from kernels.bench import harness

    env = {"device": harness.device_description(), "python": platform.python_version(), "host": platform.node()}
    for dist in ("torch", "triton", "transformers", "deepspeed", "accelerate", "webdataset"):
        env[dist] = harness._version(dist)
    env["cuda_runtime"] = str(torch.version.cuda)
    driver = "none"
    if shutil.which("nvidia-smi"):
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = "unknown (nvidia-smi failed)"
    env["driver"] = driver
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        env["commit"] = "unknown"
    return env


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def section_pytest(dry_run: bool) -> dict:
    """``pytest -m gpu tests/kernels``: its summary line (on CPU every test skips)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests/kernels"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|error)",
                                                                               line)), "no summary")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    return {"command": " ".join(command[2:]), "returncode": proc.returncode, "summary": summary, "counts": counts,
            "tail": "\n".join(lines[-15:]) if proc.returncode not in (0, 5) else ""}


def section_span(dry_run: bool) -> dict:
    import torch

    from kernels.bench import bench_span_kd

    grid = DRY_SPAN_GRID if dry_run else SPAN_GRID
    providers = ("torch", "xdist") if dry_run else ("torch", "compile", "xdist")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if dry_run else torch.bfloat16
    warmup, reps = (1, 3) if dry_run else (10, 50)
    rows = []
    for L in grid["L"]:
        for B in grid["B"]:
            for provider in providers:
                rows += bench_span_kd.bench_point(provider, B, L, dtype, device, warmup, reps)
    return {"rows": rows, "table": bench_span_kd.table(rows), "options": bench_span_kd.OPTIONS,
            "dtype": str(dtype).removeprefix("torch."), "warmup": warmup, "reps": reps}


def section_kd(dry_run: bool) -> dict:
    import torch

    from kernels.bench import bench_kd

    grid = DRY_KD_GRID if dry_run else KD_GRID
    providers = ("torch", "xdist") if dry_run else ("torch", "compile", "xdist")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = SimpleNamespace(dtype="fp32" if dry_run else "bf16", temperature=2.0, direction="forward", block_v=None,
                           num_warps=None, warmup=1 if dry_run else 5, reps=3 if dry_run else 20)
    copy_bytes = 2**20 if dry_run else 2**30
    copy = bench_kd.copy_bandwidth_gbs(device, copy_bytes)
    rows = []
    for n_rows in grid["rows"]:
        for vocab in grid["V"]:
            for provider in providers:
                rows += bench_kd.bench_point(provider, n_rows, vocab, args, copy[0])
    table = bench_kd.markdown_table([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return {"rows": rows, "table": table, "copy_gbs": copy, "copy_bytes": copy_bytes, "dtype": args.dtype,
            "warmup": args.warmup, "reps": args.reps}


def section_train(dry_run: bool, work: Path, peak_tflops: float | None) -> dict:
    import torch

    from kernels.bench import gpu_check_train as gt

    plan = gt.dry_run_plan() if dry_run else gt.gpu_plan()
    env = gt.subprocess_env(dry_run)
    config = gt.write_job(work, plan)
    t0 = time.perf_counter()
    gt.prepare(config, env)
    prepare_s = time.perf_counter() - t0
    ce = gt.run_xdist(config, plan, env, work / "xdist-ce", ["method.name=ce"])
    shutil.rmtree(work / "xdist-ce" / "checkpoints", ignore_errors=True)  # GBs at full size
    skd = gt.run_xdist(config, plan, env, work / "xdist-skd-cache",
                       ["method.name=skd", "method.teacher=fixed", "method.teacher_cache=full"])
    shutil.rmtree(work / "xdist-skd-cache" / "checkpoints", ignore_errors=True)
    hf = gt.run_hf(config, plan, env, work / "hf-trainer")
    flops = gt.model_flops_per_sample(plan)
    if peak_tflops is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    tokens = hf["tokens_per_sample"]
    runs = {}
    for label, run in (("xdist", ce), ("hf_trainer_deepspeed", hf)):
        mfu = run["samples_per_s"] * flops / (peak_tflops * 1e12) if peak_tflops else None
        runs[label] = run | {"tokens_per_s": run["samples_per_s"] * tokens, "mfu": mfu}
    return {"plan": plan.__dict__ | {"steps": plan.steps}, "prepare_s": prepare_s, "flops_per_sample": flops,
            "peak_tflops": peak_tflops, "tokens_per_sample": tokens, "runs": runs, "skd_cache": skd,
            "ce_epoch_s": ce["epoch_s"], "skd_epoch_s": skd["epoch_s"]}


# --------------------------------------------------------------------------------------------------
# Targets and the report
# --------------------------------------------------------------------------------------------------


def _points(rows: list[dict], kernel: str, x_name: str) -> dict[tuple, dict]:
    """{(config key, x, provider): {(mode, metric): p50}} from harness rows."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["kernel"] != kernel or r["p50"] in (None, ""):
            continue
        cfg = r["extra_config"] if isinstance(r["extra_config"], str) else ""
        fixed = dict(kv.split("=", 1) for kv in cfg.split(";") if "=" in kv)
        key = fixed.get("L") or fixed.get("rows")
        out.setdefault((int(key), int(r["x_value"]), r["provider"]), {})[(r["mode"], r["metric"])] = float(r["p50"])
    return out


def _worst(values: list[tuple[float, str]], lowest: bool = True) -> tuple[float, str] | None:
    return (min if lowest else max)(values) if values else None


def targets(report: Report) -> list[Target]:
    s = report.sections
    span = Target("span KD fwd+bwd: speed-up over eager (worst B x L)", ">= 8x")
    span_c = Target("span KD fwd+bwd: speed-up over torch.compile (worst B x L)", ">= 1.5x")
    span_l = Target("span KD: kernel launches per fwd+bwd (most over B x L)", "<= 2")
    kd_bw = Target("vocab KD fwd+bwd: % of measured copy bandwidth (worst rows x V)", ">= 85%")
    kd_c = Target("vocab KD fwd+bwd: speed-up over torch.compile (worst rows x V)", ">= 1.3x")
    kd_m = Target("vocab KD: peak extra memory / size of an fp32 [rows, V] (most)", "< 1 (no fp32 [rows, V])")
    tr = Target("training samples/s: xdist / HF Trainer + DeepSpeed", ">= 1.2x")
    mfu = Target("training MFU (xdist)", ">= 45%")
    skd = Target("SKD epoch with teacher-logit cache / CE epoch (time)", "<= 1.1x")
    gpu_tests = Target("pytest -m gpu tests/kernels", "all pass, none skipped")

    def ratio_lines(points, speedup_of, over, fmt_key):
        vals = []
        for (key, x, provider), m in points.items():
            if provider != speedup_of or ("full", "time") not in m:
                continue
            base = points.get((key, x, over), {}).get(("full", "time"))
            if base:
                vals.append((base / m[("full", "time")], fmt_key(key, x)))
        return vals

    if "span" in s:
        pts = _points(s["span"]["rows"], "span_kd", "B")
        key = lambda L, B: f"B={B}, L={L}"  # noqa: E731
        for tgt, over in ((span, "torch"), (span_c, "compile")):
            w = _worst(ratio_lines(pts, "xdist", over, key))
            if w:
                tgt.measured, tgt.met, tgt.note = f"{w[0]:.3g}x", w[0] >= (8 if over == "torch" else 1.5), w[1]
        launches = [(m[("full", "launches")], key(k, x)) for (k, x, p), m in pts.items()
                    if p == "xdist" and ("full", "launches") in m]
        w = _worst(launches, lowest=False)
        if w:
            span_l.measured, span_l.met, span_l.note = f"{w[0]:.0f}", w[0] <= 2, w[1]
    if "kd" in s:
        pts = _points(s["kd"]["rows"], "kd", "V")
        key = lambda rows, V: f"rows={rows}, V={V}"  # noqa: E731
        bw = [(m[("full", "pct_copy")], key(k, x)) for (k, x, p), m in pts.items()
              if p == "xdist" and ("full", "pct_copy") in m]
        w = _worst(bw)
        if w:
            kd_bw.measured, kd_bw.met, kd_bw.note = f"{w[0]:.3g}%", w[0] >= 85, w[1]
        w = _worst(ratio_lines(pts, "xdist", "compile", key))
        if w:
            kd_c.measured, kd_c.met, kd_c.note = f"{w[0]:.3g}x", w[0] >= 1.3, w[1]
        mem = [(m[("full", "memory")] / (4 * k * x), key(k, x)) for (k, x, p), m in pts.items()
               if p == "xdist" and ("full", "memory") in m]
        w = _worst(mem, lowest=False)
        if w:
            kd_m.measured, kd_m.met, kd_m.note = f"{w[0]:.2f}", w[0] < 1, w[1]
    if "train" in s:
        t = s["train"]
        x, h = t["runs"]["xdist"], t["runs"]["hf_trainer_deepspeed"]
        r = x["samples_per_s"] / h["samples_per_s"]
        tr.measured, tr.met = f"{r:.2f}x", r >= 1.2
        tr.note = f"{x['samples_per_s']:.1f} vs {h['samples_per_s']:.1f} samples/s"
        if x["mfu"] is not None:
            mfu.measured, mfu.met = f"{100 * x['mfu']:.1f}%", x["mfu"] >= 0.45
            mfu.note = f"peak {t['peak_tflops']} TFLOP/s bf16 dense"
        r = t["skd_epoch_s"] / t["ce_epoch_s"]
        skd.measured, skd.met = f"{r:.2f}x", r <= 1.1
        skd.note = f"{t['skd_epoch_s']:.1f} s vs {t['ce_epoch_s']:.1f} s, cache build included"
    if "pytest" in s:
        c = s["pytest"]["counts"]
        gpu_tests.measured = s["pytest"]["summary"]
        gpu_tests.met = s["pytest"]["returncode"] == 0 and c.get("passed", 0) > 0 and not c.get("skipped")
    return [gpu_tests, span, span_c, span_l, kd_bw, kd_c, kd_m, tr, mfu, skd]


def render(report: Report, env: dict[str, str], command: str) -> str:
    total = time.time() - report.started
    stamp = dt.datetime.fromtimestamp(report.started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# GPU check{' (DRY RUN on CPU)' if report.dry_run else ''}: {env['device']}", ""]
    if report.dry_run:
        lines += ["**Dry run**: tiny shapes on CPU, Triton under the interpreter, no torch.compile. These numbers "
                  "check the plumbing of the check and say nothing about performance.", ""]
    lines += [f"- date: {stamp}", f"- command: `{command}`", f"- commit: {env['commit']}",
              f"- driver: {env['driver']}, CUDA runtime {env['cuda_runtime']}",
              "- versions: " + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "triton", "transformers",
                                                                    "deepspeed", "accelerate", "webdataset")),
              f"- total wall time: {total:.0f} s (target < 480 s); per section: "
              + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in report.sections.items()), ""]
    lines += ["## Targets (measured / target; empty = not measured)", "",
              "| what | measured | target | met | where / note |", "|---|---|---|---|---|"]
    for t in targets(report):
        met = "" if t.met is None else ("dry run" if report.dry_run else "yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.measured or ''} | {t.target} | {met} | {t.note} |")
    for name, err in report.errors.items():
        lines += ["", f"**Section {name} failed:**", "", "```", err.strip()[-3000:], "```"]
    s = report.sections
    if "pytest" in s:
        lines += ["", "## pytest -m gpu", "", f"`{s['pytest']['command']}`: {s['pytest']['summary']}"]
        if s["pytest"]["tail"]:
            lines += ["", "```", s["pytest"]["tail"], "```"]
    if "span" in s:
        sp = s["span"]
        lines += ["", "## Span KD (forward + backward)", "",
                  f"Options {sp['options']}, dtype {sp['dtype']}, warmup {sp['warmup']}, reps {sp['reps']}; µs p50 "
                  "(p20–p80); launches from torch.profiler; peak extra memory of one fwd+bwd.", "", sp["table"]]
    if "kd" in s:
        k = s["kd"]
        lines += ["", "## Vocabulary KD", "",
                  f"dtype {k['dtype']}, forward KL, T=2; copy bandwidth (clone of {k['copy_bytes'] >> 20} MiB, same "
                  f"run): {k['copy_gbs'][0]:.1f} GB/s; GB/s = (|s| + |t| + |dS|) / time of fwd+bwd.", "", k["table"]]
    if "train" in s:
        t = s["train"]
        p = t["plan"]
        lines += ["", "## Training throughput (one rank, ZeRO-2)", "",
                  f"xlm-roberta random init {p['architecture']}, vocab {p['vocab']}, seq {p['seq_len']}, "
                  f"{p['precision']}, micro-batch {p['micro_batch']}, {p['features']} synthetic features "
                  f"({p['steps']} steps, the first {p['warmup']} not timed), same shards and DeepSpeed JSON "
                  f"for both; {t['tokens_per_sample']:.1f} tokens per sample; MFU = samples/s x "
                  f"{t['flops_per_sample'] / 1e12:.4g} TFLOP per sample (6 N T + 12 layers d T²) / peak "
                  f"{t['peak_tflops'] or 'unknown (--peak-tflops)'} TFLOP/s.", "",
                  "| run | samples/s | tokens/s | MFU | steps timed | final loss |", "|---|---|---|---|---|---|"]
        for label, r in t["runs"].items():
            m = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            loss = r.get("final_loss", "")
            lines.append(f"| {label} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {m} | "
                         f"{r['steps_timed']} | {loss} |")
        lines += ["", f"SKD epoch (teacher fixed, teacher_cache full, cache build included): {t['skd_epoch_s']:.1f} s; "
                  f"CE epoch: {t['ce_epoch_s']:.1f} s; both from the start of the training loop to the last step."]
    return "\n".join(lines) + "\n"


def _interpret_kernels() -> None:
    """Run the Triton kernels under the interpreter. ``triton.jit`` reads TRITON_INTERPRET when a kernel is
    decorated, and ``python -m kernels.bench.gpu_check`` has imported the kernel modules (``kernels/__init__``)
    before this code runs: the ``__main__`` block re-executes the process with the variable set."""
    os.environ["TRITON_INTERPRET"] = "1"
    from kernels import kd

    if type(kd._kd_fwd_kernel).__name__ != "InterpretedFunction":
        raise SystemExit("gpu_check --dry-run: the kernels were imported compiled; set TRITON_INTERPRET=1 before "
                         "importing them (python -m kernels.bench.gpu_check --dry-run does it itself)")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "device"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (plumbing only; CI runs it)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default docs/benchmarks, runs/gpu-check-dry-run with --dry-run)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch directory for the training job (default: a temp dir)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device, for MFU")
    args = parser.parse_args(argv)
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    if args.dry_run:
        _interpret_kernels()
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: the GPU check needs one (use --dry-run on CPU to check the plumbing)")
    if args.dry_run:
        torch.set_num_threads(1)
    out = args.out or (REPO / ("runs/gpu-check-dry-run" if args.dry_run else "docs/benchmarks"))
    report = Report(dry_run=args.dry_run)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="xdist-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        for name in sections:
            start = time.perf_counter()
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                if name == "pytest":
                    result = section_pytest(args.dry_run)
                elif name == "span":
                    result = section_span(args.dry_run)
                elif name == "kd":
                    result = section_kd(args.dry_run)
                else:
                    result = section_train(args.dry_run, work / "train", args.peak_tflops)
            except Exception:  # one failing section must not lose the others' figures
                report.errors[name] = traceback.format_exc()
                print(report.errors[name], file=sys.stderr, flush=True)
                continue
            report.sections[name] = result | {"wall_s": time.perf_counter() - start}
            print(f"[gpu_check] {name} done in {report.sections[name]['wall_s']:.0f} s", flush=True)
    command = "python -m kernels.bench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    day = dt.datetime.fromtimestamp(report.started, dt.UTC).strftime("%Y-%m-%d")
    stem = out / f"gpu_check_{day}_{'dry-run' if args.dry_run else _slug(env['device'].split(' (')[0])}"
    out.mkdir(parents=True, exist_ok=True)
    text = render(report, env, command.strip())
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    raw = {"environment": env, "dry_run": args.dry_run, "sections": report.sections, "errors": report.errors,
           "targets": [t.__dict__ for t in targets(report)]}
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    print(text)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    if "--dry-run" in sys.argv[1:] and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"  # see _interpret_kernels
        os.execv(sys.executable, [sys.executable, "-m", "kernels.bench.gpu_check", *sys.argv[1:]])
    raise SystemExit(main())
