"""The tables of docs/experiments/mblm_cpu.md from the run directory docs/experiments/mblm_cpu.sh writes.

    python docs/experiments/mblm_cpu_report.py runs/mblm-cpu

Reads each run's ``eval/final/metrics.json``, ``compare/comparison.json`` (McNemar per language and per
scope against the baseline), ``timings.tsv`` and the exported weights (parameter counts from the safetensors
headers; nothing is unpickled). Prints markdown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from safetensors import safe_open

SUPERVISED = ("en", "de", "zh")


def parameters(export: Path) -> int:
    total = 0
    for path in sorted(export.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 -- safe_open has keys(), not iteration
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def seconds_per_step(run: Path) -> float:
    """Median wall seconds between consecutive optimizer steps (train_log.jsonl): the training step alone,
    robust to the checkpoint and start-up pauses the total wall time includes."""
    times = [json.loads(line)["time"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the directory mblm_cpu.sh wrote (runs/mblm-cpu)")
    root = parser.parse_args().runs
    comparison = json.loads((root / "compare" / "comparison.json").read_text())["sets"]["xnli-dev"]
    names = list(comparison["summary"])
    languages = [row["group"] for row in comparison["groups"]]
    accuracy = {name: {row["group"]: row["accuracy"][name] for row in comparison["groups"]} for name in names}

    print("| run | " + " | ".join(languages) + " | supervised | zero-shot | macro | gap |")
    print("|---|" + "---:|" * (len(languages) + 4))
    for name in names:
        summary = comparison["summary"][name]
        cells = [f"{accuracy[name][lang]:.1f}" for lang in languages]
        cells += [f"{summary['supervised_macro']:.2f}", f"{summary['zero_shot_macro']:.2f}", f"{summary['macro']:.2f}",
                  f"{summary['transfer_gap']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\nMcNemar exact vs the baseline, p-value (rows only the student gets right / only the baseline):\n")
    scopes = ["all", "supervised", "zero_shot"]
    print("| run | " + " | ".join(scopes + languages) + " |")
    print("|---|" + "---:|" * (len(scopes) + len(languages)))
    for name, tests in comparison["tests"].items():
        cells = []
        for test in [tests["scopes"][s] for s in scopes] + [tests["groups"][lang] for lang in languages]:
            n, mean = test["n_pairs"], test["mean_difference"]
            only_student = round((test["n_nonzero"] + mean * n) / 2)  # mean Δ = (only_s - only_b) / n
            p = "–" if test["p_value"] is None else f"{test['p_value']:.2g}"
            cells.append(f"{p} ({only_student}/{test['n_nonzero'] - only_student})")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n| run | parameters | vs baseline | median s/step | vs baseline | wall s (start-up, teacher pass, eval) |")
    print("|---|---:|---:|---:|---:|---:|")
    timings = dict(line.split("\t")[:2] for line in (root / "timings.tsv").read_text().splitlines()[1:])
    base, base_step = parameters(root / "baseline" / "export"), seconds_per_step(root / "baseline")
    for name in [n for n in timings if n.startswith("teacher")] + names:
        count, step = parameters(root / name / "export"), seconds_per_step(root / name)
        print(f"| {name} | {count:,} | {count / base:.3f}× | {step:.3f} | {step / base_step:.2f}× | {timings[name]} |")

    print("\nTeachers on their own language (held-out groups):\n")
    for lang in SUPERVISED:
        metrics = json.loads((root / f"teacher-{lang}" / "eval" / "final" / "metrics.json").read_text())
        print(f"- {lang}: {metrics['sets']['xnli-dev']['summary']['macro']:.2f} %")


if __name__ == "__main__":
    main()
