"""Readers of cross-lingual classification sources: XNLI, PAWS-X, XCOPA, local JSONL/CSV/TSV, Hugging Face.

What every reader guarantees (see :class:`xdist.config.SourceConfig`):

* **Parallelism is checked, not assumed.** A parallel source must have the same number of rows in every
  language and, where rows have ids, the same id on the same row; otherwise :class:`DataError` names the
  file that differs. Row *i* of every language is one instance (one ``instance`` uid).
* **Bad rows** (a missing column, an unknown label, an empty text, malformed JSON, a repeated id) stop the
  read with a :class:`DataError` naming ``file:line`` and the field, or with ``bad_records: skip`` are
  skipped and counted per reason in a :class:`SkipReport`. In a parallel source a bad row drops its
  instance in *every* language (counted as ``parallel_copy``), so the languages stay aligned.
* **Split by group, never by row** (:func:`group_is_eval`): XNLI's three hypotheses of one premise share a
  group; the group key is read from ``group_language``'s copy — also when that language is not among the
  languages read (its file is read for the keys alone) — so every language, and every config that reads
  any subset of the languages, splits identically.
* ``max_examples`` keeps the first N instances (after the split), the same ones in every language.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xdist.config import GroupSplitConfig, SourceConfig
from xdist.data.sources import DataError, SkipReport, resolve_path
from xdist.tasks.classification import formats
from xdist.tasks.classification.examples import ClassificationExample

_BUILTIN_FILES = {"xnli": "tsv", "pawsx": "tsv", "xcopa": "jsonl"}
_BUILTIN_COLUMNS = {
    "xnli": ("text_a", "text_b", "label"),
    "pawsx": ("text_a", "text_b", "label"),
}
_CHOICE_FIELDS = ("premise", "choice1", "choice2", "question")
_PAIR_FIELDS = ("text_a", "text_b")


@dataclass
class ClassificationReadResult:
    """What :func:`read_classification_source` returns."""

    examples: list[ClassificationExample]
    """Examples language by language (in ``languages`` order), each language in row order."""

    languages: list[str]
    """The languages read, in order."""

    skipped: SkipReport = field(default_factory=SkipReport)
    """Rows skipped under ``bad_records: skip`` (empty under ``error``)."""

    instances: int = 0
    """Instances kept per language (every language of a parallel source has the same)."""


def group_is_eval(key: str, split: GroupSplitConfig) -> bool:
    """True when group ``key`` is on the evaluation side of ``split``.

    ``u = int(sha256(f"{seed}\\n{key}")[:8], big-endian) / 2**64``; held out iff ``u < eval_fraction``.
    Each group is decided alone, so its side never depends on the other groups, the file or the order; the
    held-out fraction is ``eval_fraction`` in expectation (binomial around it).
    """
    digest = hashlib.sha256(f"{split.seed}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < split.eval_fraction


# --------------------------------------------------------------------------------------------------
# Raw rows
# --------------------------------------------------------------------------------------------------


class _BadRow(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class _Row:
    where: str
    """``file:line`` (or ``dataset row i``)."""
    values: dict[str, Any] | None
    """Our fields -> raw values; None for a row that could not be parsed at all (see ``bad``)."""
    bad: _BadRow | None = None


@dataclass
class _Table:
    """One language's rows, in order."""

    language: str
    label: str
    """The file (or dataset) name used in messages."""
    rows: list[_Row]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _read_builtin_tsv(path: Path, names: tuple[str, ...]) -> list[_Row]:
    rows = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        cells = line.split("\t")
        if len(cells) != len(names):
            bad = _BadRow(
                "missing_column" if len(cells) < len(names) else "extra_column",
                f"{where}: expected {len(names)} tab-separated columns ({', '.join(names)}), found {len(cells)}",
            )
            rows.append(_Row(where, None, bad))
            continue
        rows.append(_Row(where, dict(zip(names, cells, strict=True))))
    return rows


def _read_jsonl(path: Path) -> list[_Row]:
    rows = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(_Row(where, None, _BadRow("bad_json", f"{where}: malformed JSON ({err.msg})")))
            continue
        if not isinstance(record, dict):
            rows.append(_Row(where, None, _BadRow("bad_json", f"{where}: expected a JSON object per line")))
            continue
        rows.append(_Row(where, record))
    return rows


def _read_delimited(path: Path, delimiter: str) -> list[_Row]:
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record or any(value is None for value in record.values()):
                    message = f"{where}: the row has a different number of columns than the header"
                    bad = _BadRow("missing_column", message)
                    rows.append(_Row(where, None, bad))
                    continue
                rows.append(_Row(where, dict(record)))
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise DataError(f"{path}: not valid {'TSV' if delimiter == chr(9) else 'CSV'}: {err}") from None
    return rows


def _load_hf(source: SourceConfig, location: str, language: str) -> tuple[str, Any]:
    """A ``datasets.Dataset`` for one language: a ``save_to_disk`` directory, else a hub dataset."""
    import datasets

    config = source.hf_config.replace("{lang}", language) if source.hf_config else None
    local = Path(location)
    try:
        if local.is_dir():
            loaded = datasets.load_from_disk(str(local))
            label = str(local)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split is None or source.split not in loaded:
                    raise DataError(
                        f"{local}: a DatasetDict with splits {sorted(loaded)}; set 'split' to one of them"
                    )
                loaded = loaded[source.split]
                label = f"{local}[{source.split}]"
            return label, loaded
        if source.split is None:
            raise DataError(f"source '{source.name}': 'split' is required to load the hub dataset {location!r}")
        loaded = datasets.load_dataset(location, config, split=source.split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError...)
        raise DataError(
            f"source '{source.name}': cannot load Hugging Face dataset {location!r} (config {config!r}, split "
            f"{source.split!r}): {err}. Give a save_to_disk directory, or a dataset available offline"
        ) from None
    return f"{location}[{config or ''}:{source.split}]", loaded


def _hf_rows(label: str, dataset: Any) -> list[_Row]:
    return [_Row(f"{label} row {i}", dict(record)) for i, record in enumerate(dataset)]


# --------------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------------


def _fail(source: SourceConfig, message: str) -> DataError:
    return DataError(f"source '{source.name}' (format {source.format}): {message}")


def _builtin_tables(source: SourceConfig, root: str | None) -> list[_Table]:
    ext = _BUILTIN_FILES[source.format]
    directory = resolve_path(source.path, root)
    if not directory.is_dir():
        raise _fail(source, f"{directory} is not a directory (expected <split>-<lang>.{ext} files in it)")
    pattern = re.compile(rf"([a-z]+)-([a-z]{{2,3}})\.{ext}")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        match = pattern.fullmatch(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = path
    split = source.split
    if split is None:
        if len(found) != 1:
            raise _fail(source, f"{directory} has files of splits {sorted(found)}; set 'split' to one of them")
        split = next(iter(found))
    if split not in found:
        raise _fail(source, f"no {split}-<lang>.{ext} files in {directory} (splits found: {sorted(found)})")
    files = found[split]
    languages = source.languages or ([source.language] if source.language else sorted(files))
    missing = [lang for lang in languages if lang not in files]
    if missing:
        raise _fail(source, f"no file for languages {missing} in {directory} (found {sorted(files)})")
    tables = []
    for lang in languages:
        path = files[lang]
        if ext == "jsonl":
            rows = _read_jsonl(path)
        else:
            names = _BUILTIN_COLUMNS[source.format]
            rows = _read_builtin_tsv(path, names if source.labelled else names[:2])
        tables.append(_Table(lang, str(path), rows))
    return tables


def _generic_tables(source: SourceConfig, root: str | None) -> list[_Table]:
    langs = source.languages or ([source.language] if source.language else [])
    if "{lang}" in source.path or (source.format == "hf" and "{lang}" in (source.hf_config or "")):
        if not source.languages:
            raise _fail(source, "path or hf_config has a {lang} pattern; list the languages in 'languages'")
        locations = {lang: source.path.replace("{lang}", lang) for lang in langs}
    else:
        if len(langs) != 1:
            raise _fail(source, "a path without {lang} holds one language: set 'language' (or use a {lang} pattern)")
        locations = {langs[0]: source.path}
    tables = []
    for lang, location in locations.items():
        if source.format == "hf":
            local = resolve_path(location, root)
            label, dataset = _load_hf(source, str(local) if local.is_dir() else location, lang)
            tables.append(_Table(lang, label, _hf_rows(label, dataset)))
            continue
        path = resolve_path(location, root)
        rows = _read_jsonl(path) if source.format == "jsonl" else _read_delimited(
            path, "," if source.format == "csv" else "\t"
        )
        tables.append(_Table(lang, str(path), rows))
    return tables


# --------------------------------------------------------------------------------------------------
# Rows -> fields
# --------------------------------------------------------------------------------------------------


def _field_columns(source: SourceConfig) -> dict[str, str]:
    """Our field -> the raw row's key."""
    if source.format == "xcopa":
        return {"premise": "premise", "choice1": "choice1", "choice2": "choice2", "question": "question",
                "label": "label", "id": "idx"}
    if source.format in _BUILTIN_COLUMNS:
        return {name: name for name in _BUILTIN_COLUMNS[source.format]}
    wanted = (*(_CHOICE_FIELDS if formats.is_choice(source) else _PAIR_FIELDS), "label", "id")
    return {name: source.columns.get(name, name) for name in wanted}


@dataclass
class _Fields:
    text_a: str
    text_b: str | None
    label: int | None
    id: str | None
    choices: tuple[str, ...] = ()
    question: str | None = None


def _text(values: dict, column: str, where: str, what: str, required: bool = True) -> str | None:
    if column not in values:
        if not required:
            return None
        raise _BadRow("missing_column", f"{where}: column {column!r} ({what}) is missing; columns: {sorted(values)}")
    value = values[column]
    if not isinstance(value, str):
        raise _BadRow("bad_value", f"{where}: column {column!r} ({what}) should be text, got {type(value).__name__}")
    if not value.strip():
        raise _BadRow("empty_text", f"{where}: column {column!r} ({what}) is empty")
    return value


def _label(values: dict, column: str, names: list[str], where: str) -> int:
    if column not in values:
        raise _BadRow("missing_column", f"{where}: label column {column!r} is missing; columns: {sorted(values)}")
    raw = values[column]
    if isinstance(raw, str) and raw.strip() in names:
        return names.index(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(names):
        return raw
    raise _BadRow("unknown_label", f"{where}: unknown label {raw!r}; expected one of {names} (or their ids)")


def _fields(source: SourceConfig, row: _Row, columns: dict[str, str]) -> _Fields:
    if row.bad is not None:
        raise row.bad
    values, where = row.values or {}, row.where
    label = _label(values, columns["label"], formats.class_names(source), where) if source.labelled else None
    raw_id = values.get(columns["id"]) if columns.get("id") in values else None
    row_id = None if raw_id is None else str(raw_id)
    if formats.is_choice(source):
        premise = _text(values, columns["premise"], where, "premise")
        choices = tuple(_text(values, columns[c], where, c) for c in ("choice1", "choice2"))
        question = _text(values, columns["question"], where, "question")
        return _Fields(premise, None, label, row_id, choices, question)  # type: ignore[arg-type]
    text_a = _text(values, columns["text_a"], where, "text_a")
    text_b = _text(values, columns["text_b"], where, "text_b")
    return _Fields(text_a, text_b, label, row_id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The read
# --------------------------------------------------------------------------------------------------


def _check_parallel(source: SourceConfig, tables: list[_Table]) -> None:
    reference = tables[0]
    for table in tables[1:]:
        if len(table.rows) != len(reference.rows):
            raise _fail(
                source,
                f"parallel languages do not line up: {table.label} has {len(table.rows)} rows, "
                f"{reference.label} has {len(reference.rows)}; every language needs the same rows in the same order",
            )


def _check_ids(source: SourceConfig, fields: list[list[_Fields | _BadRow]], tables: list[_Table]) -> None:
    """Row i has the same id in every language (where both rows parsed and have ids)."""
    for i, reference in enumerate(fields[0]):
        if not isinstance(reference, _Fields) or reference.id is None:
            continue
        for lang_fields, table in zip(fields[1:], tables[1:], strict=True):
            other = lang_fields[i]
            if isinstance(other, _Fields) and other.id is not None and other.id != reference.id:
                raise _fail(
                    source,
                    f"parallel languages do not line up: {table.rows[i].where} has id {other.id!r} where "
                    f"{tables[0].rows[i].where} has {reference.id!r}",
                )


def _parse_table(source: SourceConfig, table: _Table, columns: dict[str, str]) -> list[_Fields | _BadRow]:
    parsed: list[_Fields | _BadRow] = []
    seen: dict[str, str] = {}
    for row in table.rows:
        try:
            fields = _fields(source, row, columns)
            if fields.id is not None:
                if fields.id in seen:
                    raise _BadRow("duplicate_id", f"{row.where}: id {fields.id!r} repeats {seen[fields.id]}")
                seen[fields.id] = row.where
            parsed.append(fields)
        except _BadRow as bad:
            parsed.append(bad)
    return parsed


_TEXT_GROUP_KEYS = ("text_a", "text_b", "premise")


def _key_table(source: SourceConfig, root: str | None, tables: list[_Table]) -> _Table | None:
    """``group_language``'s copy when the split keys groups by a text of it and this read leaves it out.

    Without it the key would be the text of whichever language was read, and a config reading only ``de``
    would put an instance on another side than a config reading ``en`` and ``de`` (a teacher trained on
    the held-out rows of its student, say). None when a read language keys the split, the key is not a
    text (ids and row numbers are the same in every language), or the source has no other copy to read
    (one file without a ``{lang}`` pattern).
    """
    if (source.groups == "all" or not formats.is_parallel(source)
            or formats.group_key(source) not in _TEXT_GROUP_KEYS
            or any(t.language == source.group_language for t in tables)):
        return None
    patterned = "{lang}" in source.path or (source.format == "hf" and "{lang}" in (source.hf_config or ""))
    if source.format not in _BUILTIN_FILES and not patterned:
        return None
    key_source = replace(source, languages=[source.group_language], language=None)
    try:
        if source.format in _BUILTIN_FILES:
            return _builtin_tables(key_source, root)[0]
        return _generic_tables(key_source, root)[0]
    except (DataError, OSError) as err:
        raise _fail(
            source,
            f"the {source.groups} split keys each instance by its {source.group_language!r} copy "
            f"({formats.group_key(source)}), which could not be read ({err}); set 'group_language' to a "
            "language this source has, the same in every config that reads it",
        ) from err


def _group_value(source: SourceConfig, fields: _Fields, key: str) -> str:
    by = formats.group_key(source)
    if by == "id" and fields.id is not None:
        return fields.id
    if by in ("text_a", "premise"):
        return fields.text_a
    if by == "text_b" and fields.text_b is not None:
        return fields.text_b
    return key


def read_classification_source(
    source: SourceConfig, *, root: str | None = None, bad_records: str = "error"
) -> ClassificationReadResult:
    """Read ``source`` (paths relative to ``root``, i.e. ``data.root``) into examples.

    ``bad_records``: ``error`` (the first bad row raises :class:`DataError` naming ``file:line``) or
    ``skip`` (bad rows are counted in the result's :class:`SkipReport`). Structural problems — a missing
    file, unaligned parallel languages, an unknown split — are always errors.
    """
    if bad_records not in ("error", "skip"):
        raise ValueError(f"bad_records must be 'error' or 'skip', got {bad_records!r}")
    tables = _builtin_tables(source, root) if source.format in _BUILTIN_FILES else _generic_tables(source, root)
    parallel = formats.is_parallel(source)
    columns = _field_columns(source)
    fields = [_parse_table(source, table, columns) for table in tables]
    # copies: the read languages' rows, plus group_language's when it is read only to key the split (its
    # bad rows drop their instance, as they do in a config that reads that language).
    key_table = _key_table(source, root, tables) if parallel else None
    copy_tables = tables if key_table is None else [*tables, key_table]
    copy_fields = fields if key_table is None else [*fields, _parse_table(source, key_table, columns)]
    if parallel:
        _check_parallel(source, copy_tables)
        _check_ids(source, copy_fields, copy_tables)

    skipped = SkipReport()
    for lang_fields in copy_fields:
        for item in lang_fields:
            if isinstance(item, _BadRow):
                if bad_records == "error":
                    raise DataError(f"{item} (set data.bad_records: skip to skip and count such rows)")
                skipped.add(item.reason, str(item))

    languages = [table.language for table in tables]
    group_index = next((i for i, t in enumerate(copy_tables) if t.language == source.group_language), 0)
    examples: list[ClassificationExample] = []
    kept_instances = 0
    for t, table in enumerate(tables):
        kept = 0
        for i, item in enumerate(fields[t]):
            if parallel:
                copies = [lang_fields[i] for lang_fields in copy_fields]
                if any(isinstance(c, _BadRow) for c in copies):
                    if isinstance(item, _Fields):
                        skipped.add("parallel_copy", f"{table.rows[i].where}: dropped with a bad parallel row")
                    continue
                reference = copy_fields[group_index][i]
                key_fields = reference if isinstance(reference, _Fields) else item
                ids = [c.id for c in copies if isinstance(c, _Fields) and c.id is not None]
                key = ids[0] if ids else str(i)
                instance = f"{source.name}:{key}"
            else:
                if isinstance(item, _BadRow):
                    continue
                key_fields = item
                key = item.id if item.id is not None else str(i)
                instance = f"{source.name}:{table.language}:{key}"
            assert isinstance(item, _Fields) and isinstance(key_fields, _Fields)
            group = _group_value(source, key_fields, instance)
            if source.groups != "all" and group_is_eval(group, source.group_split) != (source.groups == "eval"):
                continue
            examples.append(
                ClassificationExample(
                    instance=instance, language=table.language, text_a=item.text_a, text_b=item.text_b,
                    label=item.label, group=group, choices=item.choices, question=item.question,
                    source=table.rows[i].where,
                )
            )
            kept += 1
            if source.max_examples is not None and kept >= source.max_examples:
                break
        kept_instances = max(kept_instances, kept)
    return ClassificationReadResult(examples=examples, languages=languages, skipped=skipped, instances=kept_instances)
