"""ALSACE's stages on a job config: ``xdist select-teachers`` and the pair shards of ``xdist prepare``.

The job's training source (``data.train``, exactly one parallel classification source) is the unlabelled
parallel set; ``method.alsace`` holds the selection, pair and loss settings (:mod:`.config`).

* :func:`select_teachers_job` — every rank reads the source (deterministic), featurises the first
  ``selection.max_instances`` instances of every language with the job's head, the stage-0 checkpoint
  runs over them (rows dealt to ranks, :func:`.vote.predict_probabilities`), and the main rank writes
  ``selection.json``, ``selection.png``, ``votes.npz`` and TensorBoard events beside the selection file.
* :func:`pair_records` — the shard records of the pairs (:mod:`.pairs`), one record per instance pair,
  grouped by language pair (``en-de``) so the manifest counts pairs per language pair.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xdist.config import ConfigError, JobConfig
from xdist.data.shards import ShardRecord
from xdist.methods.alsace.config import AlsaceConfig
from xdist.methods.alsace.pairs import build_pair_samples
from xdist.methods.alsace.selection import Selection, load_selection, select_from_config

log = logging.getLogger("xdist.alsace")


def alsace_config(cfg: JobConfig) -> AlsaceConfig:
    """``method.alsace`` (its defaults when the section is absent)."""
    return cfg.method.alsace


def selection_file(cfg: JobConfig) -> Path:
    """Where the selection of this job lives: ``method.alsace.selection.file`` or the run's default."""
    configured = alsace_config(cfg).selection.file
    return Path(configured) if configured else Path(cfg.train.output_dir) / "selection" / "selection.json"


def unlabelled_source(cfg: JobConfig) -> Any:
    """The one parallel training source; ConfigError naming ``data.train`` otherwise."""
    if len(cfg.data.train) != 1:
        raise ConfigError(
            f"config field 'data.train': ALSACE reads exactly one unlabelled parallel source, got {len(cfg.data.train)}"
        )
    from xdist.tasks.classification.formats import is_parallel

    source = cfg.data.train[0]
    if not is_parallel(source):
        raise ConfigError(f"config field 'data.train[0].parallel': source {source.name!r} must be parallel for ALSACE")
    return source


def job_selection(cfg: JobConfig, languages: list[str]) -> Selection:
    """The job's split of ``languages``: computed from the config for the modes that need no model, read
    from the selection file (checked against ``languages``) for ``vote``."""
    settings = alsace_config(cfg).selection
    if settings.mode == "vote":
        return load_selection(selection_file(cfg), languages)
    return select_from_config(settings, languages)


def shards_config(cfg: JobConfig) -> dict[str, Any]:
    """What of ``method.alsace`` decides the pair shards' content (joins ``xdist prepare``'s fingerprint):
    the pair settings and the split itself (so a new selection file re-prepares)."""
    settings = alsace_config(cfg)
    split: dict[str, Any] = dataclasses.asdict(settings.selection)
    split.pop("file", None)
    if settings.selection.mode == "vote":
        path = selection_file(cfg)
        split = {"file_teachers": None, "file_students": None}
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            split = {"file_teachers": raw.get("teachers"), "file_students": raw.get("students"),
                     "file_ranking": raw.get("ranking")}  # fmt: skip
    return {"method": "alsace", "pairs": dataclasses.asdict(settings.pairs), "selection": split}


def pair_records(
    cfg: JobConfig, task: Any, read: Any, tokenizer: Any, stats: Any
) -> tuple[Iterator[ShardRecord], dict]:
    """The pair shard records of the unlabelled source's ``read`` (examples of every language) and the report
    for the manifest (``feature_stats["alsace"][<source>]``). Every ``eval.sets`` source is read too, so
    that no evaluated row is paired."""
    source = unlabelled_source(cfg)
    languages = list(dict.fromkeys(e.language for e in read.examples))
    selection = job_selection(cfg, languages)
    evaluation = [example for eval_source in cfg.eval.sets for example in task.read(eval_source, cfg.data).examples]

    def encode(examples):
        return list(task.shard_records(examples, tokenizer, cfg, stats, source))

    samples, report = build_pair_samples(read.examples, selection, alsace_config(cfg).pairs, encode,
                                         evaluation=evaluation, source=source.name)  # fmt: skip
    log.info("ALSACE pairs: %d teachers %s, %d students %s, %d language pairs x %d instances = %d pairs "
             "(%d instances excluded as evaluation rows)", len(selection.teachers), selection.teachers,
             len(selection.students), selection.students, len(report.language_pairs), report.per_pair,
             len(samples), report.excluded_evaluation_instances)  # fmt: skip
    records = (
        ShardRecord(uid=sample.key, part=0, arrays=sample.arrays, group=sample.pair.language_pair,
                    source=f"{source.name}:pairs",
                    meta={"instance": sample.pair.uid, "first": sample.pair.first, "second": sample.pair.second})
        for sample in samples
    )  # fmt: skip
    return records, {**report.to_dict(), "selection_mode": selection.mode, "ranking": selection.ranking}


def select_teachers_job(cfg: JobConfig, checkpoint: str, *, out_dir: str | None = None) -> Selection | None:
    """``xdist select-teachers``: the stage-0 ``checkpoint`` votes on the unlabelled set; the main rank writes
    the selection (default: beside ``method.alsace.selection.file``) and returns it (None on other ranks)."""
    from xdist.data.tokenizer import load_tokenizer
    from xdist.distributed import setup_distributed
    from xdist.errors import MissingPathError
    from xdist.methods.alsace.vote import predict_probabilities, write_selection_outputs
    from xdist.monitor import Monitor, setup_logging
    from xdist.tasks import get_task

    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise MissingPathError(
            f"--checkpoint {checkpoint!r}: not an exported model directory (no config.json in it); point it at "
            "the stage-0 run's <train.output_dir>/export"
        )
    if cfg.task != "classification":
        raise ConfigError(f"config field 'task': select-teachers is ALSACE's (classification), got {cfg.task!r}")
    settings = alsace_config(cfg).selection
    source = unlabelled_source(cfg)
    dist = setup_distributed()
    setup_logging(dist.rank)
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    read = task.read(source, cfg.data)
    by_language: dict[str, list] = {}
    for example in read.examples:
        by_language.setdefault(example.language, []).append(example)
    if settings.max_instances is not None:
        by_language = {lang: rows[: settings.max_instances] for lang, rows in by_language.items()}
    languages = list(by_language)
    instances = [e.instance for e in by_language[languages[0]]]
    stats = task.new_feature_stats()
    features = {lang: [r.arrays for r in task.shard_records(rows, tokenizer, cfg, stats, source)]
                for lang, rows in by_language.items()}  # fmt: skip
    model = task.build_model(cfg.model, tokenizer=tokenizer, checkpoint=path).to(dist.device).eval()
    log.info("select-teachers: %d languages x %d instances of %s on %d rank(s)", len(languages), len(instances),
             source.name, dist.world_size)  # fmt: skip
    probs = predict_probabilities(model, task.logits, features, batch_size=cfg.eval.batch_size, dist=dist)
    from xdist.tasks.classification.formats import class_names

    selection = select_from_config(settings, languages, probs, class_names=class_names(source))
    if not dist.is_main:
        return None
    out = Path(out_dir) if out_dir else selection_file(cfg).parent
    monitor = Monitor(out, enabled=True)
    files = write_selection_outputs(selection, probs, instances, out, monitor=monitor)
    monitor.close()
    vote = selection.vote or {}
    log.info("selection (%s): teachers %s, students %s; xi %.5f; %d instances, %d ties; written to %s",
             selection.mode, selection.teachers, selection.students, vote.get("xi", float("nan")),
             vote.get("instances_used", 0), vote.get("ties", {}).get("count", 0), files["selection"])  # fmt: skip
    return selection
