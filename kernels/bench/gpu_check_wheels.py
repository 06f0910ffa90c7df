"""Wheels for the GPU check on a machine without network (``kernels/bench/gpu_check.sh``).

The GPU machines this check is written for have torch, triton and transformers but not DeepSpeed,
webdataset, accelerate (Hugging Face Trainer), tensorboard, matplotlib or pytest, and cannot reach a package index.
``fetch`` runs where there is network and the project's environment is installed; it writes into one
folder, to be carried beside the repository:

* ``deepspeed-<v>-py3-none-any.whl``, built here with ``pip wheel`` (PyPI has only its source archive,
  whose ``setup.py`` imports torch; ``DS_BUILD_OPS`` unset = pure Python, ops JIT-built on first use);
* every other package of the closure of :data:`NEEDED` that torch/triton/transformers do not already
  bring, at the versions installed here (the ones the project is tested with), as binary wheels for each
  ``--python`` version (manylinux x86_64), via ``pip download --no-deps``;
* ``requirements.txt``: the package names (DeepSpeed pinned), which ``install`` (on the GPU machine)
  feeds to ``pip install --no-index --find-links <folder>``: pip takes the wheels that fit its Python.
  Where a pinned version has no wheel for a ``--python`` version, that version gets the newest one.

    python -m kernels.bench.gpu_check_wheels fetch --dest kernels/bench/wheels --python 3.11
    python -m kernels.bench.gpu_check_wheels install --dest kernels/bench/wheels

About 41 MiB for one Python version (3.11, measured; grpcio, pillow, matplotlib, fonttools are the large
ones): fetch only the GPU machine's version when the folder must travel through a size limit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

NEEDED = ("deepspeed", "webdataset", "accelerate", "tensorboard", "matplotlib", "pytest")
"""What the check imports beyond the GPU image: the DeepSpeed engine, shards, the HF Trainer, TensorBoard,
matplotlib (``xdist.evaluation`` draws heatmaps), pytest. ``gpu_check.sh`` tests the same imports."""
PRESENT = ("torch", "triton", "transformers")
"""What the GPU image has; their dependency closure is not fetched."""
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")


def closure(roots: tuple[str, ...], pythons: list[str]) -> dict[str, str]:
    """{distribution: pin} of ``roots`` and everything they require (no extras) on any of ``pythons``:
    ``==<installed version>``, or the requirement's own specifier for a package this interpreter does not
    need (e.g. ``tomli`` for Python 3.10 fetched from 3.11)."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            seen[name] = str(req.specifier)
            continue
        seen[name] = f"=={dist.version}"
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"python_version": v, "python_full_version": f"{v}.0", "extra": ""} for v in pythons]
            if sub.marker is None or any(sub.marker.evaluate(e) for e in envs):
                todo.append(sub)
    return seen


def fetch(dest: Path, pythons: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = closure(NEEDED, pythons)
    present = closure(PRESENT, pythons)
    pins = {n: v for n, v in sorted(wanted.items()) if n not in present}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest),
                    f"deepspeed{pins['deepspeed']}"], check=True)  # fmt: skip
    others = {n: v for n, v in pins.items() if n != "deepspeed"}
    platform_args = sum((["--platform", p] for p in PLATFORMS), [])
    for python in pythons:
        download = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python, *platform_args,
                    "--dest", str(dest)]
        if subprocess.run([*download, *(f"{n}{v}" for n, v in others.items())]).returncode == 0:
            continue
        # Some pinned version does not exist for this Python (e.g. markdown 3.11 needs >= 3.11): one by one,
        # falling back to the newest release that has a wheel for it.
        for name, pin in others.items():
            if subprocess.run([*download, f"{name}{pin}"], capture_output=True).returncode != 0:
                print(f"gpu_check_wheels: {name}{pin} has no wheel for Python {python}; fetching its newest one")
                subprocess.run([*download, name], check=True)
    # Names only for the packages (pip picks the wheel that fits the GPU machine's Python); DeepSpeed pinned.
    lines = [f"deepspeed{pins['deepspeed']}", *others]
    (dest / "requirements.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"gpu_check_wheels: {len(pins)} packages for Python {', '.join(pythons)} in {dest} ({size:.1f} MiB)")


def install(dest: Path) -> None:
    requirements = dest / "requirements.txt"
    if not requirements.is_file():
        raise SystemExit(f"gpu_check_wheels: {requirements} not found; run `kernels/bench/gpu_check.sh --fetch-wheels` "
                         "on a machine with network and carry the folder here")  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(dest),
                    "-r", str(requirements)], check=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("fetch", "install"))
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent / "wheels")
    parser.add_argument("--python", nargs="+", default=[f"{sys.version_info.major}.{sys.version_info.minor}"],
                        help="Python versions of the GPU machine to fetch binary wheels for (default: this one)")
    args = parser.parse_args(argv)
    fetch(args.dest, args.python) if args.command == "fetch" else install(args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
