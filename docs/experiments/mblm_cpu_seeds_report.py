"""The "Across seeds" tables of docs/experiments/mblm_cpu.md from what mblm_cpu_seeds.sh writes.

    python docs/experiments/mblm_cpu_seeds_report.py runs/mblm-cpu-seeds

Reads ``s<seed>/compare/comparison.json`` (``xdist compare --per-cell`` of one seed's runs, the baseline
first) and prints markdown: each run's supervised / zero-shot / macro accuracy per seed with the mean and
sample standard deviation over seeds, then each student's zero-shot difference to the baseline of the same
seed with McNemar's p on the zero-shot scope and the number of zero-shot languages it is ahead in.

McNemar's zero-shot scope counts the 12 translations of one instance as 12 independent pairs, which they
are not. The clustered test treats the *instance* as the unit: per instance, the number of zero-shot
languages the student gets right minus the baseline's (from each run's
``eval/final/predictions/xnli-dev/<lang>.json``), and the Wilcoxon signed-rank test (SciPy's defaults) of
those differences over the instances. Instances that share a premise are still counted apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from scipy.stats import wilcoxon

SUPERVISED = ("en", "de", "zh")
COLUMNS = (("supervised_macro", "supervised"), ("zero_shot_macro", "zero-shot"), ("macro", "macro"))


def seed_of(path: Path) -> int:
    return int(path.name.removeprefix("s"))


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def zero_shot_correct_per_instance(run: Path) -> Counter[str]:
    """instance -> how many zero-shot languages ``run`` classified right (uids are ``<instance>/<lang>``)."""
    right: Counter[str] = Counter()
    for path in sorted((run / "eval" / "final" / "predictions" / "xnli-dev").glob("*.json")):
        if path.stem in SUPERVISED:
            continue
        for uid, record in json.loads(path.read_text()).items():
            instance = uid.rsplit("/", 1)[0]
            right[instance] += bool(record["correct"])
    return right


def clustered_p(student: Path, baseline: Path) -> float:
    """Wilcoxon signed-rank p of the per-instance zero-shot differences (module docstring)."""
    ours, theirs = zero_shot_correct_per_instance(student), zero_shot_correct_per_instance(baseline)
    if set(ours) != set(theirs) or not ours:
        raise SystemExit(f"{student} and {baseline} were not evaluated on the same instances")
    return float(wilcoxon([ours[i] - theirs[i] for i in sorted(ours)]).pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the directory mblm_cpu_seeds.sh wrote (runs/mblm-cpu-seeds)")
    root = parser.parse_args().runs
    comparisons = {
        seed_of(path.parent.parent): json.loads(path.read_text())["sets"]["xnli-dev"]
        for path in root.glob("s*/compare/comparison.json")
    }
    if not comparisons:
        raise SystemExit(f"no s<seed>/compare/comparison.json under {root}: run mblm_cpu_seeds.sh first")
    seeds = sorted(comparisons)
    # The runs every seed has (a seed linked to mblm_cpu.sh's directory also has the K = 1 students).
    names = [n for n in comparisons[seeds[0]]["summary"] if all(n in comparisons[s]["summary"] for s in seeds)]
    baseline = names[0]

    print("Accuracy % (held-out groups) per training seed; last column: mean ± sample sd over seeds.\n")
    print("| run | scope | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
    print("|---|---|" + "---:|" * (len(seeds) + 1))
    for name in names:
        for key, label in COLUMNS:
            values = [comparisons[s]["summary"][name][key] for s in seeds]
            print(f"| {name} | {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {mean_sd(values)} |")

    print(f"\nZero-shot: student − {baseline} of the same seed, points (McNemar p on the zero-shot scope; "
          "zero-shot languages ahead / behind of 12; p clustered by instance, Wilcoxon).\n")
    print("| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | seeds ahead |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for name in names[1:]:
        cells, diffs = [], []
        for s in seeds:
            comparison = comparisons[s]
            diff = comparison["summary"][name]["zero_shot_macro"] - comparison["summary"][baseline]["zero_shot_macro"]
            diffs.append(diff)
            zero_shot = [row for row in comparison["groups"] if row["group"] not in SUPERVISED]
            ahead = sum(row["accuracy"][name] > row["accuracy"][baseline] for row in zero_shot)
            behind = sum(row["accuracy"][name] < row["accuracy"][baseline] for row in zero_shot)
            p = comparison["tests"][name]["scopes"]["zero_shot"]["p_value"]
            clustered = clustered_p(root / f"s{s}" / name, root / f"s{s}" / baseline)
            cells.append(f"{diff:+.2f} (p {p:.2g}; {ahead}/{behind}; clustered p {clustered:.2g})")
        print(f"| {name} | " + " | ".join(cells) + f" | {mean_sd(diffs)} | {sum(d > 0 for d in diffs)}/{len(seeds)} |")


if __name__ == "__main__":
    main()
