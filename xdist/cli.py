"""``xdist`` command line: ``prepare``, ``train``, ``eval``, ``bench``, ``compare``.

Thin on purpose: parse arguments, load the config, call the layer that does the work.

Process model for ``train`` and ``eval``:
- plain ``xdist train CONFIG`` runs one process (no launcher needed);
- ``--nproc N`` starts N local ranks itself through ``torch.distributed.run --standalone``;
- inside an existing ``torchrun`` / ``deepspeed`` launch (``RANK``/``WORLD_SIZE`` set, or the
  ``--local_rank`` argument the ``deepspeed`` launcher appends) it simply joins the job, and dies with
  its launcher.

Faults (:mod:`xdist.launcher`, :mod:`xdist.faults`): termination signals reach every rank and nothing of a
job outlives ``xdist``; ``--max-restarts N`` restarts failed ranks from the newest verified checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

# Set before torch/deepspeed import so every rank inherits them (see docs in README "Environment").
_CPU_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML job config (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=3e-5 (repeatable)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (number of ranks), got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _launch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=_positive_int, default=None,
                        help="start N local ranks (torchrun --standalone)")


def _strip_local_rank(argv: list[str]) -> list[str]:
    """Drop the ``--local_rank=N`` the ``deepspeed`` launcher inserts (before the subcommand).

    ``LOCAL_RANK`` in the environment, which every launcher sets, is what :mod:`xdist.distributed` reads;
    the argument is only adopted when the environment lacks it.
    """
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        for flag in ("--local_rank", "--local-rank"):
            if arg == flag and i + 1 < len(argv):
                os.environ.setdefault("LOCAL_RANK", argv[i + 1])
                skip = True
                break
            if arg.startswith(flag + "="):
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
                break
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdist", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read raw data, tokenise, write webdataset shards + manifest")
    _common(p)
    p.add_argument("--overwrite", action="store_true", help="rebuild shards even if a manifest exists")

    p = sub.add_parser("train", help="train with DeepSpeed on the prepared shards")
    _common(p)
    _launch_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest verified checkpoint in output_dir")
    p.add_argument("--max-restarts", type=_non_negative_int, default=0, metavar="N",
                   help="with --nproc: restart the ranks up to N times after a failure, resuming from the newest "
                        "verified checkpoint (torchrun's elastic restarts)")

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's eval sets (EM/F1, G-XLT)")
    _common(p)
    _launch_args(p)
    p.add_argument("--checkpoint", required=True, help="exported Hugging Face model directory")
    p.add_argument("--out", default=None, help="report directory (default: <checkpoint>/eval)")

    p = sub.add_parser("bench", help="stream and training throughput of a config (prints a table)")
    _common(p)
    p.add_argument("--nproc", type=_positive_int, default=2, help="ranks for the training measurement")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps to time")

    p = sub.add_parser("compare", help="compare runs' evaluations: G-XLT/XLT, per-cell F1, Wilcoxon tests")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_REPORT_DIR",
                   help="training output dir (its eval/final) or report dir (has metrics.json); two or more")
    p.add_argument("--names", default=None, help="comma-separated run names (default: directory names)")
    p.add_argument("--baseline", default=None, help="run name every other run is tested against (default: first)")
    p.add_argument("--set", dest="sets", action="append", default=None, metavar="SETNAME",
                   help="compare only this evaluation set (repeatable; default: every set all runs share)")
    p.add_argument("--out", default=None, help="write comparison.md, comparison.json and heatmaps here")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--per-cell", action="store_true", help="also test every (question, context) cell")
    return parser


def _in_launch() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _relaunch(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``args.nproc`` local ranks, supervised (xdist.launcher)."""
    from xdist.config import load_config
    from xdist.launcher import run_supervised, torchrun_command

    forwarded, skip_value = [], False
    for arg in argv:  # every argument but "--nproc N" / "--max-restarts N" (and their "=" forms)
        if skip_value:
            skip_value = False
        elif arg in ("--nproc", "--max-restarts"):
            skip_value = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            forwarded.append(arg)
    # Read here once (an invalid config fails here, once, rather than on every rank): the grace period.
    grace_s = load_config(args.config, args.overrides).train.signal_grace_s
    command = torchrun_command(forwarded, nproc=args.nproc, max_restarts=getattr(args, "max_restarts", 0),
                               grace_s=grace_s)
    return run_supervised(command, {**_CPU_ENV, **os.environ}, grace_s=grace_s)


def _run_rank(args: argparse.Namespace, cfg: object) -> int:
    """``train``/``eval`` in this process (one rank of a job): faults end it with one message and a status."""
    from xdist.checkpoint import CheckpointError
    from xdist.distributed import cleanup
    from xdist.faults import CollectiveTimeout, Interrupted, NonFiniteError, die_with_parent

    if _in_launch():
        die_with_parent()  # nothing of a job outlives its launcher (e.g. torchrun killed with -9)
    try:
        if args.command == "train":
            from xdist.train import train

            train(cfg, resume=args.resume)
        else:
            from xdist.evaluate import evaluate_checkpoint

            evaluate_checkpoint(cfg, args.checkpoint, out_dir=args.out)
    except (Interrupted, NonFiniteError, CheckpointError, CollectiveTimeout) as error:
        # Raised alike on every rank (the ranks agreed through a collective) unless it names its rank.
        if os.environ.get("RANK", "0") == "0" or "rank " in str(error):
            print(f"xdist {args.command}: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code if isinstance(error, Interrupted) else 1
    finally:
        cleanup()  # tear the process group down cleanly (no-op when none was created)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = _strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    for key, value in _CPU_ENV.items():
        os.environ.setdefault(key, value)

    if args.command == "compare":
        from xdist.compare import run_compare

        try:
            comparison = run_compare(args.runs, names=args.names.split(",") if args.names else None,
                                     baseline=args.baseline, sets=args.sets, out=args.out, alpha=args.alpha,
                                     per_cell=args.per_cell)
        except (ValueError, FileNotFoundError) as error:
            print(f"xdist compare: error: {error}", file=sys.stderr)
            return 2
        print(comparison.to_markdown(), end="")
        return 0

    if args.command in ("train", "eval") and args.nproc and not _in_launch():
        return _relaunch(args, argv)

    from xdist.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "prepare":
        from xdist.data.prepare import prepare
        from xdist.monitor import setup_logging

        setup_logging()

        prepare(cfg, overwrite=args.overwrite)
    elif args.command in ("train", "eval"):
        return _run_rank(args, cfg)
    elif args.command == "bench":
        from xdist.bench import run_bench

        run_bench(cfg, args.config, args.overrides, nproc=args.nproc, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
