"""The tables of docs/experiments/mblm_cpu.md from the run directory docs/experiments/mblm_cpu.sh writes.

    python docs/experiments/mblm_cpu_report.py runs/mblm-cpu

Reads each run's ``eval/final/metrics.json``, ``compare/comparison.json`` (McNemar per language and per
scope against the baseline), ``timings.tsv`` and the exported weights (parameter counts from the safetensors
headers; nothing is unpickled). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
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

    print("\n| run | parameters | vs baseline | training wall s (incl. start-up, teacher pass, evaluation) |")
    print("|---|---:|---:|---:|")
    timings = dict(line.split("\t")[:2] for line in (root / "timings.tsv").read_text().splitlines()[1:])
    base = parameters(root / "baseline" / "export")
    for name in [n for n in timings if n.startswith("teacher")] + names:
        count = parameters(root / name / "export")
        print(f"| {name} | {count:,} | {count / base:.3f}× | {timings[name]} |")

    print("\nTeachers on their own language (held-out groups):\n")
    for lang in SUPERVISED:
        metrics = json.loads((root / f"teacher-{lang}" / "eval" / "final" / "metrics.json").read_text())
        print(f"- {lang}: {metrics['sets']['xnli-dev']['summary']['macro']:.2f} %")


if __name__ == "__main__":
    main()
