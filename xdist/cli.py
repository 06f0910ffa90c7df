"""The xdist command line: prepare, train, eval, select-teachers, bench, compare.

Thin on purpose: parse arguments, load the config, call the layer that does the work.

Process model for ``train`` and ``eval``:
- plain ``xdist train CONFIG`` runs one process (no launcher needed);
- ``--nproc N`` starts N local ranks itself through ``torch.distributed.run --standalone``;
- inside an existing ``torchrun`` / ``deepspeed`` launch (``RANK``/``WORLD_SIZE`` set, or the
  ``--local_rank`` argument the ``deepspeed`` launcher appends) it simply joins the job, and dies with
  its launcher (:func:`xdist.faults.die_with_parent`).

Faults under ``--nproc`` (:func:`_relaunch`): SIGTERM/SIGINT/SIGHUP to ``xdist`` reach every rank (torchrun's
agent runs in this process and forwards them), the ranks finish their step and may checkpoint within
``train.signal_grace_s``, then whatever is left is killed; ``kill -9`` of ``xdist`` takes the ranks along;
``--max-restarts N`` restarts failed ranks, which resume from the run's newest verified checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from xdist.errors import EXIT_USER_ERROR, UserError, debug_enabled, one_paragraph

# Set before torch/deepspeed import so every rank inherits them (see docs in README "Environment").
_CPU_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
_ERROR_DIR_ENV = "XDIST_ERROR_DIR"
"""Set by ``--nproc`` for its ranks: where each rank writes its error for the launcher to print once."""


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
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (a number of ranks), got {text!r}")
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
    parser.add_argument("--nproc", type=_positive_int, default=None, metavar="N",
                        help="start N local ranks (torchrun --standalone); default: one process")


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (when it has a meaningful one) after its help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _subcommand(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help, formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error (also: XDIST_DEBUG=1)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdist", formatter_class=_HelpFormatter,
        description="Cross-lingual knowledge distillation: prepare data, train with DeepSpeed, evaluate, compare.",
        epilog="Run 'xdist COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: XDIST_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "prepare", "read raw data, tokenise, write webdataset shards and their manifest")
    _common(p)
    p.add_argument("--overwrite", action="store_true", help="rebuild shards even if a manifest exists")

    p = _subcommand(sub, "train", "train with DeepSpeed on the prepared shards")
    _common(p)
    _launch_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest verified checkpoint in output_dir")
    p.add_argument("--max-restarts", type=_non_negative_int, default=0, metavar="N",
                   help="with --nproc: after a rank fails, restart all ranks up to N times; they resume from the "
                        "run's newest verified checkpoint (torchrun's elastic restarts)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in output_dir (without it, such a directory is refused)")

    p = _subcommand(sub, "eval", "evaluate a checkpoint on the config's eval sets (EM/F1, G-XLT)")
    _common(p)
    _launch_args(p)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="exported Hugging Face model directory")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report directory (default: eval/<checkpoint name> beside the checkpoint, e.g. "
                        "runs/demo/eval/export for runs/demo/export)")

    p = _subcommand(sub, "select-teachers",
                    "ALSACE: choose teacher languages by the majority vote of a stage-0 checkpoint on data.train")
    _common(p)
    _launch_args(p)
    p.add_argument("--checkpoint", required=True, help="the stage-0 model (an exported Hugging Face directory)")
    p.add_argument("--out", default=None,
                   help="output directory (default: the directory of method.alsace.selection.file, which is "
                        "<train.output_dir>/selection unless set)")

    p = _subcommand(sub, "export-branch",
                    "MBLM: write one language's branch of a branched model as a standard transformers classifier")
    p.add_argument("checkpoint", metavar="DIR", help="the branched model (the export of an 'xdist train' MBLM run)")
    p.add_argument("--language", required=True, help="the branch to export (one of the model's branch languages)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory: a *ForSequenceClassification checkpoint (and the tokenizer saved "
                        "beside the model)")

    p = _subcommand(sub, "bench", "stream and training throughput of a config (prints a table)")
    _common(p)
    p.add_argument("--nproc", type=_positive_int, default=2, metavar="N", help="ranks for the training measurement")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="optimizer steps to time")

    p = _subcommand(sub, "data", "fetch the public data sets and tokenizer the recipes read, or list them")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = _subcommand(data, "fetch", "download, verify (sha256) and unpack data sets into the data directory")
    q.add_argument("names", nargs="+", metavar="NAME",
                   help="data sets to fetch ('all' for every one; see 'xdist data list')")
    q.add_argument("--dir", default=None,
                   help="data directory (default: $XDIST_DATA, else ~/.cache/xdist/data); recipes read data.root")
    q.add_argument("--offline", action="store_true",
                   help="never download; fail if a set is missing (also: XDIST_OFFLINE=1)")
    _subcommand(data, "list", "list the data sets 'xdist data fetch' knows, and whether each is in the data directory")

    p = _subcommand(sub, "demo", "the main job in one command: fetch what is missing, prepare, train on 2 ranks, "
                                 "evaluate, say where the results are")
    p.add_argument("config", nargs="?", default=None, help="job config (default: the repository's configs/demo.yaml)")
    p.add_argument("--nproc", type=int, default=2, metavar="N", help="local ranks to train on")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run (and its shards)")
    p.add_argument("--offline", action="store_true",
                   help="never download; use what is in $XDIST_DATA (also: XDIST_OFFLINE=1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")

    p = _subcommand(sub, "compare", "compare runs' evaluations: G-XLT/XLT, per-cell F1, Wilcoxon tests")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_REPORT_DIR",
                   help="training output dir (its eval/final) or report dir (has metrics.json); two or more")
    p.add_argument("--names", default=None, help="comma-separated run names (default: directory names)")
    p.add_argument("--baseline", default=None, help="run name every other run is tested against (default: first)")
    p.add_argument("--set", dest="sets", action="append", default=None, metavar="SETNAME",
                   help="compare only this evaluation set (repeatable; default: every set all runs share)")
    p.add_argument("--out", default=None, metavar="DIR", help="write comparison.md, comparison.json and heatmaps here")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--per-cell", action="store_true", help="also test every (question, context) cell")
    p.add_argument("--selection", default=None, metavar="SELECTION_JSON",
                   help="ALSACE: also report the teacher and student language groups of this selection file "
                        "(baseline = before, each other run = after; writes groups.json/groups.md with --out)")
    return parser


def _data(args: argparse.Namespace) -> int:
    """``xdist data fetch|list``."""
    from xdist.data.fetch import REGISTRY, default_data_dir, fetch, missing_targets
    from xdist.monitor import setup_logging

    setup_logging()
    root = Path(getattr(args, "dir", None) or default_data_dir()).expanduser()
    if args.data_command == "list":
        for dataset in REGISTRY.values():
            state = "missing" if missing_targets(dataset, root) else "present"
            print(f"{dataset.name:16} {state:8} {', '.join(dataset.targets):38} {dataset.summary}")
        print(f"(data directory: {root})")
        return 0
    names = list(REGISTRY) if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        fetch(name, root, offline=True if args.offline else None)
    print(f"data directory: {root} (recipes read it through data.root; set XDIST_DATA={root} if it is not the default)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """``xdist demo``: fetch, prepare, train on ``--nproc`` ranks (evaluating at the end), summarise."""
    import time

    from xdist.config import load_config
    from xdist.data.fetch import default_data_dir, fetch
    from xdist.demo import DEMO_SETS, demo_config, demo_tokenizer, summary
    from xdist.monitor import setup_logging

    setup_logging()
    start = time.perf_counter()
    config = str(demo_config(args.config))
    data_dir = default_data_dir()
    for name in DEMO_SETS:
        fetch(name, data_dir, offline=True if args.offline else None)
    overrides = [f"data.root={data_dir}", f"features.tokenizer={demo_tokenizer(data_dir)}"]
    deepspeed = load_config(config).train.deepspeed
    if args.config is None and deepspeed and not os.path.isabs(deepspeed):
        # The repository's demo names configs/deepspeed/... relative to the checkout: run from anywhere.
        overrides.append(f"train.deepspeed={Path(config).resolve().parents[1] / deepspeed}")
    overrides += args.overrides
    sets = [item for override in overrides for item in ("--set", override)]
    overwrite = ["--overwrite"] if args.overwrite else []
    cfg = load_config(config, overrides)
    print(f"xdist demo: data {data_dir}, tokenizer {cfg.features.tokenizer}, output {cfg.train.output_dir}",
          flush=True)
    from xdist.errors import RunExistsError
    from xdist.rundir import claim_output_dir

    try:  # before prepare: with --overwrite the old run goes first (its shards may live inside the run directory)
        claim_output_dir(Path(cfg.train.output_dir), resume=False, overwrite=args.overwrite, rank=0)
    except RunExistsError:
        raise RunExistsError(
            f"{cfg.train.output_dir!r} already holds a demo run; nothing was changed. Run 'xdist demo --overwrite' "
            f"to replace it, or keep it and write elsewhere with --set train.output_dir=runs/demo2"
        ) from None
    for step in (["prepare", config, *sets, *overwrite], ["train", config, "--nproc", str(args.nproc), *sets]):
        status = main(step)
        if status:
            return status
    print(summary(Path(cfg.train.output_dir), time.perf_counter() - start))
    return 0


def _export_branch(args: argparse.Namespace) -> int:
    """``xdist export-branch``: one branch of a saved branched model as the family's standard classifier."""
    from xdist.branched import BranchedConfig, BranchedForSequenceClassification, export_branch
    from xdist.data.tokenizer import load_tokenizer
    from xdist.errors import MissingPathError
    from xdist.models import _check_checkpoint_dir
    from xdist.monitor import setup_logging

    setup_logging()
    _quiet_libraries()
    directory = _check_checkpoint_dir(args.checkpoint)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type != BranchedConfig.model_type:
        raise MissingPathError(f"{args.checkpoint!r} holds a {model_type!r} model, not a branched (MBLM) one; "
                               "point at the export of a run with model.branches")
    model = BranchedForSequenceClassification.from_pretrained(directory, local_files_only=True)
    languages = model.config.languages
    if args.language not in languages:
        raise MissingPathError(f"{args.checkpoint!r} has no branch {args.language!r}; its branches are {languages}")
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").is_file() else None
    export_branch(model, languages.index(args.language), args.out, tokenizer)
    print(f"branch {args.language!r} of {args.checkpoint} written to {args.out} "
          f"({type(model.config.encoder).__name__.replace('Config', 'ForSequenceClassification')})")
    return 0


def _resolve_hub_ids(cfg, *, with_model: bool) -> None:
    """Download (or find in the Hugging Face cache) the tokenizer and model a job names by Hub id, once,
    before ranks start: they then run with ``HF_HUB_OFFLINE=1`` and read the cache."""
    from xdist.hub import resolve_pretrained

    resolve_pretrained(cfg.features.tokenizer, field="features.tokenizer", kind="tokenizer")
    if with_model and cfg.model.checkpoint:
        resolve_pretrained(cfg.model.checkpoint, field="model.checkpoint")


def _quiet_libraries() -> None:
    """Silence library noise a user can do nothing about (each rank would print it again)."""
    import warnings

    from transformers.utils import logging as hf_logging

    # DeepSpeed 0.19's ZeRO-1/2 calls torch.distributed.all_gather_into_tensor, deprecated in torch 2.13.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    # save_pretrained's "Writing model shards" bar for a one-file export, drawn again at every export.
    hf_logging.disable_progress_bar()


def _alsace_groups(comparison, selection_path: str, out: str | None) -> None:
    """``xdist compare --selection``: the teacher/student group view of the comparison, printed and written."""
    import json

    from xdist.methods.alsace.groups import compare_runs_by_group, groups_report_markdown
    from xdist.methods.alsace.selection import load_selection

    selection = load_selection(selection_path)
    by_set = compare_runs_by_group(comparison, selection)
    text = groups_report_markdown(by_set, comparison.baseline, selection)
    print("\n" + text, end="")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "groups.json").write_text(json.dumps(by_set, indent=2) + "\n")
        (Path(out) / "groups.md").write_text(text)


def _in_launch() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _relaunch(args: argparse.Namespace, argv: list[str], grace_s: float = 30.0) -> int:
    """Run this command on ``args.nproc`` local ranks (``torchrun --standalone``, in this process) and wait.

    torchrun's launcher runs here rather than in a child process so that a failure reaches us as a
    ``ChildFailedError`` instead of torchrun's failure box: every rank reports its error to a file in
    ``XDIST_ERROR_DIR`` (see :func:`_report_in_rank`), and we print it once, not once per rank.
    Signals and restarts: :func:`_torchrun_fault_args`.
    """
    forwarded, skip_value = [], False
    for arg in argv:  # every argument but "--nproc N" / "--max-restarts N" (and their "=" forms)
        if skip_value:
            skip_value = False
        elif arg in ("--nproc", "--max-restarts"):
            skip_value = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            forwarded.append(arg)
    for key, value in _CPU_ENV.items():
        os.environ.setdefault(key, value)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not debug_enabled():
        _quiet_torchrun_logs()
    with tempfile.TemporaryDirectory(prefix="xdist-errors-") as error_dir:
        os.environ[_ERROR_DIR_ENV] = error_dir
        try:
            run(parse_args(["--standalone", f"--nproc_per_node={args.nproc}",
                            *_torchrun_fault_args(args, grace_s), "-m", "xdist.cli", *forwarded]))
        except ChildFailedError as failure:
            return _report_ranks(args.command, Path(error_dir), failure)
        except SignalException as stopped:  # the ranks were told, had their grace period, and are gone
            if any(Path(error_dir).glob("*.error")):
                _report_ranks(args.command, Path(error_dir), stopped)
            else:
                print(f"xdist {args.command}: stopped by {signal.Signals(stopped.sigval).name} before the ranks "
                      "reported (killed after train.signal_grace_s)", file=sys.stderr)
            return 128 + int(stopped.sigval)
        finally:
            del os.environ[_ERROR_DIR_ENV]
            os.environ.pop("XDIST_RUN_ID", None)
    return 0


def _torchrun_fault_args(args: argparse.Namespace, grace_s: float) -> list[str]:
    """torchrun options for faults, and the run id its ranks share across restarts.

    torchrun's agent (in this process) forwards SIGTERM/SIGINT/SIGHUP to the ranks, waits ``grace_s`` (the
    ranks' ``train.signal_grace_s``) plus a margin for them, then SIGKILLs them. ``--max-restarts`` restarts
    every rank after a failure; ``XDIST_RUN_ID`` lets the restarted ranks find this run's checkpoints.
    """
    import uuid

    os.environ["XDIST_RUN_ID"] = uuid.uuid4().hex
    return [f"--max-restarts={getattr(args, 'max_restarts', 0)}", f"--shutdown-timeout={int(grace_s) + 10}"]


def _quiet_torchrun_logs() -> None:
    """Silence torchrun's own log lines (rendezvous, per-rank failure records): we report failures ourselves."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _report_in_rank(command: str, error: BaseException, user_error: bool) -> int:
    """Report a failure of this rank; returns the exit status.

    Under our own ``--nproc`` launch the rank writes the paragraph (or traceback) to ``XDIST_ERROR_DIR``
    and prints nothing: the launching process prints it once. Alone, it prints it here.
    """
    error_dir = os.environ.get(_ERROR_DIR_ENV)
    rank = os.environ.get("RANK", "0")
    if user_error:  # a fault that stopped the run may carry its own status (128 + signal after SIGTERM)
        text, suffix, status = one_paragraph(error), "error", getattr(error, "exit_code", EXIT_USER_ERROR)
    else:
        text, suffix, status = "".join(traceback.format_exception(error)), "traceback", 1
    if error_dir and os.path.isdir(error_dir):
        if debug_enabled() and user_error:
            traceback.print_exception(error)
        target = Path(error_dir) / f"rank{int(rank):05d}.{suffix}"
        partial = target.with_suffix(".part")
        partial.write_text(text)
        os.replace(partial, target)  # the launcher never reads half a message
        return status
    if not user_error:
        raise error
    if debug_enabled():
        traceback.print_exception(error)
    where = f" (rank {rank})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"xdist {command}: error{where}: {text}", file=sys.stderr)
    return status


def _report_ranks(command: str, error_dir: Path, failure: BaseException) -> int:
    """After a failed ``--nproc`` launch: print each distinct rank error once; returns the exit status."""
    errors = sorted(error_dir.glob("*.error"))
    if errors:
        messages: dict[str, list[str]] = {}
        for path in errors:
            messages.setdefault(path.read_text(), []).append(str(int(path.stem.removeprefix("rank"))))
        for text in messages:
            print(f"xdist {command}: error: {text}", file=sys.stderr)
        return EXIT_USER_ERROR
    tracebacks = sorted(error_dir.glob("*.traceback"))
    if tracebacks:
        path = tracebacks[0]
        others = [p.stem.removeprefix("rank").lstrip("0") or "0" for p in tracebacks[1:]]
        print(path.read_text(), end="", file=sys.stderr)
        also = f" (rank(s) {', '.join(others)} failed too)" if others else ""
        print(f"xdist {command}: rank {int(path.stem.removeprefix('rank'))} crashed{also}; "
              "its traceback is above.", file=sys.stderr)
        return 1
    # No rank reported (killed by a signal, out of memory, ...): say which and how.
    rank, record = next(iter(getattr(failure, "failures", {}).items()), (None, None))
    how = f"exit code {record.exitcode}" if record is not None else "an unknown status"
    if record is not None and record.exitcode < 0:
        with contextlib.suppress(ValueError):
            how = f"signal {signal.Signals(-record.exitcode).name}"
    print(f"xdist {command}: rank {rank} stopped with {how} before it could report an error; "
          "rerun with --debug for torchrun's own logs.", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one command; a :class:`~xdist.errors.UserError` becomes one paragraph and exit status 2."""
    argv = _strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False):
        os.environ["XDIST_DEBUG"] = "1"  # ranks started by --nproc inherit it
    try:
        return _run(args, argv)
    except UserError as error:
        return _report_in_rank(args.command, error, user_error=True)
    except Exception as error:
        if os.environ.get(_ERROR_DIR_ENV):
            return _report_in_rank(args.command, error, user_error=False)
        raise


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    for key, value in _CPU_ENV.items():
        os.environ.setdefault(key, value)

    if args.command == "data":
        return _data(args)

    if args.command == "demo":
        return _demo(args)

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
        if args.selection:
            _alsace_groups(comparison, args.selection, args.out)
        return 0

    if args.command == "export-branch":
        return _export_branch(args)

    from xdist.config import load_config

    cfg = load_config(args.config, args.overrides)  # before any launch: a config error is reported once
    if args.command == "train" and not _in_launch():  # refused here costs no rank start-up
        from xdist.rundir import claim_output_dir

        claim_output_dir(Path(cfg.train.output_dir), resume=args.resume, overwrite=args.overwrite, rank=0)
    if args.command in ("train", "eval", "select-teachers") and args.nproc and not _in_launch():
        _resolve_hub_ids(cfg, with_model=args.command == "train")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # resolved above: ranks read the cache, not the Hub
        return _relaunch(args, argv, cfg.train.signal_grace_s)
    if args.command in ("train", "eval") and _in_launch():
        from xdist.faults import die_with_parent

        die_with_parent()  # nothing of a job outlives its launcher, even one killed with -9
    if args.command == "prepare":
        from xdist.data.prepare import prepare
        from xdist.monitor import setup_logging

        setup_logging()

        prepare(cfg, overwrite=args.overwrite)
    elif args.command in ("train", "eval", "select-teachers"):
        _quiet_libraries()
        from xdist.distributed import cleanup

        try:
            if args.command == "train":
                from xdist.train import train

                train(cfg, resume=args.resume, overwrite=args.overwrite)
            elif args.command == "select-teachers":
                from xdist.methods.alsace.stages import select_teachers_job

                select_teachers_job(cfg, args.checkpoint, out_dir=args.out)
            else:
                from xdist.evaluate import evaluate_checkpoint

                evaluate_checkpoint(cfg, args.checkpoint, out_dir=args.out)
        finally:
            cleanup()  # tear the process group down cleanly (no-op when none was created)
    elif args.command == "bench":
        from xdist.bench import run_bench

        run_bench(cfg, args.config, args.overrides, nproc=args.nproc, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
