"""Readers of raw extractive-QA sources in SQuAD v1.1 JSON: XQuAD, MLQA, TyDi QA GoldP and plain SQuAD.

All four formats are the same JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}]}]}]}]}``); they differ in how files and languages are
found (see :class:`xdist.config.SourceConfig.format`):

* ``xquad``: a directory of ``xquad.<lang>.json`` (or one such file; for a URL, a prefix plus
  ``languages``). The files are parallel: the same ids, in the same order. A (question language q,
  context language c) cell takes the question text from file q and context and answers from file c,
  matched by id.
* ``mlqa``: a directory of ``{dev,test}-context-<c>-question-<q>.json`` (or one such file); each file
  is one cell, both languages come from its name.
* ``tydiqa``: ``tydiqa.goldp.<lang>.<split>.json`` (XTREME layout; also ``tydiqa.<lang>.<split>.json``),
  one file or a directory of them; the language comes from the name unless ``language`` is set. No titles.
* ``squad``: one file; ``language`` is required.

Decisions (also in the README of the data layer):

* **Every example needs at least one answer.** SQuAD v1.1 has no unanswerable questions: training
  needs a target, and the v1.1 EM/F1 script takes a maximum over the gold answers. An empty answer
  list (or ``is_impossible: true``, SQuAD v2) is a bad record. Several answers are kept (evaluation
  scores against all of them; :mod:`xdist.tasks.qa.features` trains on the first, as SQuAD v1.1 train files
  have exactly one).
* **Bad records** (an answer whose ``context[answer_start:answer_start+len(text)]`` is not its text, a
  question record with a missing or mistyped field, no answers) stop the read with a :class:`DataError`
  naming file, record id and field when ``data.bad_records == "error"``; with ``"skip"`` they are
  skipped, counted per reason in :class:`SkipReport` and logged. Defects above the record level (no
  ``data`` list, a paragraph without ``context`` or ``qas``) mean the file is not SQuAD v1.1 and are
  always errors.
* **Duplicate ids within a file** (the XTREME copy of TyDi QA GoldP repeats ids: 3696 questions, 89
  distinct ids in English) are made unique, never dropped: the n-th repeat (n >= 2) of id ``x`` becomes
  ``x#n``. The renaming is reported in :attr:`ReadResult.notes` and the log.
* **Article split** (``articles: train|eval``): see :func:`split_titles`.
* ``max_examples`` keeps the first N examples of each cell in file order (after the article filter
  and skipped records), so parallel cells keep the same ids.
* **Cross-lingual sampling** (``sampling``, ``xquad`` only; :mod:`xdist.tasks.qa.sampling`): instead of a
  fixed list of cells, every question id contributes the pairs of its own drawn language set. Examples
  then come question by question (in the first language's file order); ``max_examples`` counts
  questions. A question's article side is decided once for the id: parallel files that put the same id
  under titles on different sides of the split are an error, so no pair crosses the split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdist.config import DataConfig, SourceConfig, TitleSplitConfig, expand_env
from xdist.data.sources import DataError, SkipReport, is_remote, join_root, resolve_path
from xdist.tasks.qa.examples import Answer, Cell, QAExample
from xdist.tasks.qa.sampling import SamplingReport, question_cells, question_languages

log = logging.getLogger(__name__)


@dataclass
class ReadResult:
    """What :func:`read_source` returns."""

    examples: list[QAExample]
    """Examples, cell by cell (in the order of ``pairs``), each cell in file order."""

    skipped: SkipReport
    """Records skipped under ``data.bad_records: skip`` (empty under ``error``)."""

    notes: list[str] = field(default_factory=list)
    """Changes that kept records but altered them (duplicate ids made unique), one line each."""

    sampling: SamplingReport | None = None
    """What cross-lingual sampling drew (sources with ``sampling`` only)."""


# --------------------------------------------------------------------------------------------------
# Article split
# --------------------------------------------------------------------------------------------------


def title_is_eval(title: str, split: TitleSplitConfig) -> bool:
    """True when article ``title`` is on the evaluation side of ``split``.

    The rule: ``u = int(sha256(f"{seed}\\n{title}" as UTF-8)[:8], big-endian) / 2**64``; the title is held
    out for evaluation iff ``u < eval_fraction``. Each title is decided on its own, so the side of a title
    never depends on the other titles, the file, the language or the order: parallel XQuAD files (same
    titles) split identically, and a train source and an eval source configured separately are disjoint.
    The price: the held-out fraction is ``eval_fraction`` only in expectation (binomial around it).
    """
    digest = hashlib.sha256(f"{split.seed}\n{title}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < split.eval_fraction


def split_titles(titles: Iterable[str], split: TitleSplitConfig) -> tuple[list[str], list[str]]:
    """Split article titles into ``(train_titles, eval_titles)`` by :func:`title_is_eval`.

    Duplicates are dropped; each list keeps the order of first appearance.
    """
    train, held_out = [], []
    for title in dict.fromkeys(titles):
        (held_out if title_is_eval(title, split) else train).append(title)
    return train, held_out


# --------------------------------------------------------------------------------------------------
# Parsing one SQuAD v1.1 file
# --------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    title: str | None
    where: str


@dataclass
class _ParsedFile:
    path: Path
    records: list[_Record]
    """Valid records, in file order."""
    ids: list[str]
    """Every question id of the file (valid records or not), in file order, after de-duplication."""
    questions: dict[str, str]
    """Question text per id, for every record whose id and question are usable."""
    renamed: int = 0


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it: {err.strerror}") from None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _required(node: dict, key: str, kind: type, path: Path, where: str) -> Any:
    """``node[key]``, which must exist and be a ``kind``; otherwise a structural DataError."""
    if key not in node:
        raise DataError(f"{path}: {where}.{key}: missing (expected a {kind.__name__}; keys: {sorted(node)})")
    value = node[key]
    if not isinstance(value, kind):
        raise DataError(f"{path}: {where}.{key}: expected a {kind.__name__}, got {_describe(value)}")
    return value


class _BadRecord(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _parse_answers(qa: dict, context: str, where: str) -> tuple[Answer, ...]:
    if qa.get("is_impossible") is True:
        raise _BadRecord("unanswerable", f"{where}.is_impossible is true (SQuAD v2); only v1.1 is supported")
    if "answers" not in qa:
        raise _BadRecord("bad_record", f"{where}.answers: missing (expected a list of {{text, answer_start}})")
    raw_answers = qa["answers"]
    if not isinstance(raw_answers, list):
        raise _BadRecord("bad_record", f"{where}.answers: expected a list, got {_describe(raw_answers)}")
    if not raw_answers:
        raise _BadRecord("no_answers", f"{where}.answers: empty (every example needs at least one answer)")
    answers = []
    for m, answer in enumerate(raw_answers):
        at = f"{where}.answers[{m}]"
        if not isinstance(answer, dict):
            raise _BadRecord("bad_record", f"{at}: expected an object {{text, answer_start}}, got {_describe(answer)}")
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not text:
            raise _BadRecord("bad_record", f"{at}.text: expected a non-empty string, got {_describe(text)}")
        if isinstance(start, bool) or not isinstance(start, int):
            raise _BadRecord("bad_record", f"{at}.answer_start: expected an integer, got {_describe(start)}")
        found = context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            raise _BadRecord(
                "answer_offset_mismatch",
                f"{at}.answer_start: context[{start}:{start + len(text)}] is {found!r}, expected the answer "
                f"text {text!r} (context has {len(context)} characters)",
            )
        answers.append(Answer(text=text, start=start))
    return tuple(answers)


def _parse_squad_file(path: Path, bad_records: str, skipped: SkipReport) -> _ParsedFile:
    """Read and validate one SQuAD v1.1 file (see the module docstring for what is an error)."""
    top = _load_json(path)
    if not isinstance(top, dict) or not isinstance(top.get("data"), list):
        got = sorted(top) if isinstance(top, dict) else _describe(top)
        raise DataError(f"{path}: data: expected a SQuAD v1.1 object {{\"data\": [...]}} at top level, got {got}")
    parsed = _ParsedFile(path=path, records=[], ids=[], questions={})
    seen: dict[str, int] = {}
    for i, article in enumerate(top["data"]):
        where = f"data[{i}]"
        if not isinstance(article, dict):
            raise DataError(f"{path}: {where}: expected an article object, got {_describe(article)}")
        title = article.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{path}: {where}.title: expected a string, got {_describe(title)}")
        for j, paragraph in enumerate(_required(article, "paragraphs", list, path, where)):
            p_where = f"{where}.paragraphs[{j}]"
            if not isinstance(paragraph, dict):
                raise DataError(f"{path}: {p_where}: expected a paragraph object, got {_describe(paragraph)}")
            context = _required(paragraph, "context", str, path, p_where)
            for k, qa in enumerate(_required(paragraph, "qas", list, path, p_where)):
                q_where = f"{p_where}.qas[{k}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                if isinstance(qid, int) and not isinstance(qid, bool):
                    qid = str(qid)
                try:
                    if not isinstance(qa, dict):
                        raise _BadRecord("bad_record", f"{q_where}: expected a question object, got {_describe(qa)}")
                    if not isinstance(qid, str) or not qid:
                        raise _BadRecord(
                            "bad_record", f"{q_where}.id: expected a non-empty string, got {_describe(qid)}"
                        )
                    qid = _unique_id(qid, seen, parsed)
                    parsed.ids.append(qid)
                    question = qa.get("question")
                    if not isinstance(question, str) or not question.strip():
                        raise _BadRecord(
                            "bad_record", f"{q_where}.question: expected a non-empty string, got {_describe(question)}"
                        )
                    parsed.questions[qid] = question
                    answers = _parse_answers(qa, context, q_where)
                except _BadRecord as bad:
                    record = f"record id {qid!r}" if isinstance(qid, str) else "record without id"
                    message = f"{path}: {record}: {bad}"
                    if bad_records == "error":
                        raise DataError(f"{message} (set data.bad_records: skip to skip such records)") from None
                    skipped.add(bad.reason, message)
                    continue
                parsed.records.append(_Record(qid, question, context, answers, title, q_where))
    return parsed


def _unique_id(qid: str, seen: dict[str, int], parsed: _ParsedFile) -> str:
    """``qid``, or ``qid#n`` for its n-th occurrence in the file (see the module docstring)."""
    if qid not in seen:
        seen[qid] = 1
        return qid
    count = seen[qid]
    while True:
        count += 1
        candidate = f"{qid}#{count}"
        if candidate not in seen:
            seen[qid] = count
            seen[candidate] = 1
            parsed.renamed += 1
            return candidate


# --------------------------------------------------------------------------------------------------
# Cells, files and formats
# --------------------------------------------------------------------------------------------------

@dataclass
class _Read:
    """State of one :func:`read_source` call."""

    source: SourceConfig
    data: DataConfig
    skipped: SkipReport = field(default_factory=SkipReport)
    notes: list[str] = field(default_factory=list)
    epoch: int = 0
    """Epoch of a per-epoch sampling draw (see :mod:`xdist.tasks.qa.sampling`)."""
    sampling: SamplingReport | None = None

    def fail(self, message: str) -> DataError:
        if "does not exist" in message:  # say where paths are resolved and how to get the data
            fetchable = {"xquad": "xquad", "mlqa": "mlqa", "tydiqa": "tydiqa"}.get(self.source.format)
            message += (f"; paths are relative to data.root ({self.data.root!r}, default $XDIST_DATA or "
                        "~/.cache/xdist/data): set it to the directory holding the data"
                        + (f", or download the set there with 'xdist data fetch {fetchable}'" if fetchable else ""))
        return DataError(f"source '{self.source.name}' (format {self.source.format}): {message}")

    def parse(self, path: Path) -> _ParsedFile:
        parsed = _parse_squad_file(path, self.data.bad_records, self.skipped)
        if parsed.renamed:
            self.notes.append(
                f"{path}: {parsed.renamed} repeated question ids made unique as '<id>#<n>' (n-th occurrence)"
            )
        return parsed

    def requested_cells(self, languages: list[str], default: str = "diagonal") -> list[Cell]:
        """The cells ``pairs`` asks for (``default`` when unset), over ``languages`` (in that order)."""
        pairs = self.source.pairs or default
        if pairs == "diagonal":
            return [(lang, lang) for lang in languages]
        if pairs == "all":
            return [(q, c) for q in languages for c in languages]
        cells = _listed_cells(pairs)
        for q, c in cells:
            for lang in (q, c):
                if lang not in languages:
                    raise self.fail(f"pairs names language '{lang}' ({q}-{c}), but the source has {languages}")
        return cells

    def keep_title(self, title: str | None, path: Path, where: str) -> bool:
        articles = self.source.articles
        if articles == "all":
            return True
        if title is None:
            raise self.fail(f"{path}: {where} has no title, so articles: {articles} cannot split it by article")
        return title_is_eval(title, self.data.title_split) == (articles == "eval")

    def label(self, context_file: _ParsedFile, question_file: _ParsedFile) -> str:
        """:attr:`QAExample.source` of examples with contexts from one file and questions from another."""
        label = f"{self.source.name}:{context_file.path.name}"
        if question_file is not context_file:
            label += f" (questions from {question_file.path.name})"
        return label

    def example(self, cell: Cell, record: _Record, question_file: _ParsedFile, label: str) -> QAExample | None:
        """``record``'s context and answers with its question from ``question_file``; None (counted) when the
        question's record was skipped there for a bad question (its id exists: parallel ids were checked)."""
        q_lang, c_lang = cell
        question = question_file.questions.get(record.id)
        if question is None:
            self.skipped.add(
                "question_missing",
                f"{question_file.path}: record id {record.id!r} has no usable question for cell {q_lang}-{c_lang}",
            )
            return None
        return QAExample(
            id=record.id, question=question, question_lang=q_lang, context=record.context, context_lang=c_lang,
            answers=record.answers, title=record.title, source=label,
        )

    def build_cell(self, cell: Cell, context_file: _ParsedFile, question_file: _ParsedFile) -> list[QAExample]:
        label = self.label(context_file, question_file)
        examples: list[QAExample] = []
        for record in context_file.records:
            if not self.keep_title(record.title, context_file.path, record.where):
                continue
            example = self.example(cell, record, question_file, label)
            if example is None:
                continue
            examples.append(example)
            if self.source.max_examples is not None and len(examples) >= self.source.max_examples:
                break
        return examples


def _check_parallel(files: dict[str, _ParsedFile]) -> None:
    """Parallel files must hold the same ids; name the files and the first id that is missing."""
    languages = list(files)
    reference = files[languages[0]]
    reference_ids = set(reference.ids)
    for lang in languages[1:]:
        other = files[lang]
        other_ids = set(other.ids)
        for a, b, b_ids in ((reference, other, other_ids), (other, reference, reference_ids)):
            missing = next((qid for qid in a.ids if qid not in b_ids), None)
            if missing is not None:
                raise DataError(
                    f"parallel files do not line up: id {missing!r} of {a.path} is missing from {b.path} "
                    f"({len(a.ids)} vs {len(b.ids)} ids)"
                )


def _listed_cells(pairs: str) -> list[Cell]:
    """Cells of a ``pairs`` list such as ``en-de,de-en`` (validated by SourceConfig), in order, deduplicated."""
    cells = []
    for item in pairs.split(","):
        q, c = item.strip().split("-")
        cells.append((q, c))
    return list(dict.fromkeys(cells))


def _single_file_url(read: _Read, location: str) -> None:
    """Directories cannot be listed over http(s): such a source must name one file."""
    if is_remote(location) and not location.endswith(".json"):
        raise read.fail(f"{location} is a URL but not of a .json file; a URL directory cannot be listed")


_XQUAD_NAME = re.compile(r"xquad\.([a-z]{2,3})\.json")
_MLQA_NAME = re.compile(r"(dev|test)-context-([a-z]{2,3})-question-([a-z]{2,3})\.json")
_TYDIQA_NAME = re.compile(r"tydiqa(?:\.goldp)?\.([a-z]{2,3})\.(train|dev|test)\.json")


def _no_language_option(read: _Read) -> None:
    if read.source.language is not None:
        raise read.fail(f"'language' is for single-language files; use 'languages' (got {read.source.language!r})")


def _read_xquad(read: _Read, location: str) -> list[QAExample]:
    source = read.source
    _no_language_option(read)
    if location.endswith(".json"):
        # One file: a single language.
        match = _XQUAD_NAME.fullmatch(os.path.basename(location))
        if match is None:
            raise read.fail(f"{location}: expected a file named xquad.<lang>.json")
        paths = {match.group(1): resolve_path(location)}
    elif is_remote(location):
        if not source.languages:
            raise read.fail(f"{location} is a URL prefix; a URL cannot be listed, so set 'languages'")
        paths = {lang: resolve_path(f"xquad.{lang}.json", location) for lang in source.languages}
    else:
        directory = resolve_path(location)
        if not directory.is_dir():
            raise read.fail(f"directory {directory} does not exist (looked for {directory}/xquad.<lang>.json)")
        found = {
            m.group(1): p for p in sorted(directory.glob("xquad.*.json")) if (m := _XQUAD_NAME.fullmatch(p.name))
        }
        if not found:
            raise read.fail(f"no files match {directory}/xquad.<lang>.json")
        wanted = source.languages or sorted(found)
        missing = [lang for lang in wanted if lang not in found]
        if missing:
            raise read.fail(
                f"{directory}/xquad.{missing[0]}.json does not exist (languages found: {sorted(found)})"
            )
        paths = {lang: found[lang] for lang in wanted}
    languages = list(paths)
    if source.sampling is not None:
        return _sample_parallel(read, {lang: read.parse(paths[lang]) for lang in languages})
    cells = read.requested_cells(languages)
    used = dict.fromkeys(lang for cell in cells for lang in cell)
    # Load only the languages the cells use (a list of pairs may leave some out).
    files = {lang: read.parse(paths[lang]) for lang in languages if lang in used}
    if any(q != c for q, c in cells):
        _check_parallel({lang: files[lang] for lang in used})
    examples = []
    for q, c in cells:
        examples += read.build_cell((q, c), files[c], files[q])
    return examples


def _sample_parallel(read: _Read, files: dict[str, _ParsedFile]) -> list[QAExample]:
    """Examples of cross-lingual sampling over parallel files: per question id, the pairs of its drawn set."""
    sampling = read.source.sampling
    languages = list(files)
    if sampling.pivot_centric and sampling.pivot not in files:
        raise read.fail(f"sampling.pivot {sampling.pivot!r} is not among the source's languages {languages}")
    if len(files) > 1:
        _check_parallel(files)
    read.sampling = SamplingReport.start(sampling, read.epoch)
    records = {lang: {record.id: record for record in parsed.records} for lang, parsed in files.items()}
    examples: list[QAExample] = []
    for qid in files[languages[0]].ids:
        present = {lang: records[lang][qid] for lang in languages if qid in records[lang]}
        if not present:
            continue  # skipped in every language; the parser counted each
        sides = {lang: read.keep_title(r.title, files[lang].path, r.where) for lang, r in present.items()}
        if len(set(sides.values())) > 1:
            raise read.fail(
                f"question id {qid!r} lies on both sides of the article split (titles "
                f"{ {lang: r.title for lang, r in present.items()} }); parallel files must agree on its article"
            )
        if not next(iter(sides.values())):
            continue
        chosen = question_languages(qid, languages, sampling, read.epoch)
        emitted = []
        for q_lang, c_lang in question_cells(qid, languages, sampling, read.epoch):
            record = present.get(c_lang)
            if record is None:
                continue  # this language's record was skipped (counted by the parser)
            label = read.label(files[c_lang], files[q_lang])
            example = read.example((q_lang, c_lang), record, files[q_lang], label)
            if example is None:
                continue
            examples.append(example)
            emitted.append((q_lang, c_lang))
        read.sampling.add(chosen, emitted)
        if read.source.max_examples is not None and read.sampling.questions >= read.source.max_examples:
            break
    return examples


def _read_mlqa(read: _Read, location: str) -> list[QAExample]:
    source = read.source
    _no_language_option(read)
    _single_file_url(read, location)
    path = resolve_path(location)
    if path.is_file() or location.endswith(".json"):
        match = _MLQA_NAME.fullmatch(path.name)
        if match is None:
            raise read.fail(f"{path}: expected a file named {{dev,test}}-context-<c>-question-<q>.json")
        if not path.is_file():
            raise read.fail(f"file {path} does not exist")
        cell = (match.group(3), match.group(2))
        # A single file is its own cell; only an explicit list of pairs can exclude it.
        if source.pairs not in (None, "diagonal", "all") and cell not in _listed_cells(source.pairs):
            raise read.fail(f"{path.name} is cell {cell[0]}-{cell[1]}, which pairs {source.pairs!r} excludes")
        parsed = read.parse(path)
        return read.build_cell(cell, parsed, parsed)
    if not path.is_dir():
        raise read.fail(
            f"directory {path} does not exist (looked for {path}/{{dev,test}}-context-<c>-question-<q>.json)"
        )
    found: dict[Cell, Path] = {}
    splits = set()
    for candidate in sorted(path.glob("*-context-*-question-*.json")):
        if m := _MLQA_NAME.fullmatch(candidate.name):
            splits.add(m.group(1))
            found[(m.group(3), m.group(2))] = candidate
    if not found:
        raise read.fail(f"no files match {path}/{{dev,test}}-context-<c>-question-<q>.json")
    if len(splits) > 1:
        raise read.fail(f"{path} mixes splits {sorted(splits)}; point path at the directory of one split")
    split = splits.pop()
    languages = source.languages or sorted({lang for cell in found for lang in cell})
    examples = []
    cells = read.requested_cells(languages, default="all")
    if source.pairs is None:
        # MLQA is distributed as one file per cell: by default, every cell file found (over `languages`).
        cells = [cell for cell in cells if cell in found]
    for cell in cells:
        if cell not in found:
            expected = path / f"{split}-context-{cell[1]}-question-{cell[0]}.json"
            raise read.fail(f"{expected} does not exist (cell {cell[0]}-{cell[1]} of pairs {source.pairs!r})")
        parsed = read.parse(found[cell])
        examples += read.build_cell(cell, parsed, parsed)
    return examples


def _read_tydiqa(read: _Read, location: str) -> list[QAExample]:
    source = read.source
    if source.articles != "all":
        raise read.fail(
            f"articles: {source.articles} needs article titles, and TyDi QA GoldP has none; use articles: all"
        )
    _single_file_url(read, location)
    path = resolve_path(location)
    if path.is_file() or location.endswith(".json"):
        if not path.is_file():
            raise read.fail(f"file {path} does not exist")
        match = _TYDIQA_NAME.fullmatch(path.name)
        language = source.language or (match.group(1) if match else None)
        if language is None:
            raise read.fail(
                f"cannot tell the language of {path.name}: name it tydiqa.goldp.<lang>.<split>.json or set 'language'"
            )
        paths = {language: path}
    elif path.is_dir():
        by_language: dict[str, list[Path]] = {}
        for candidate in sorted(path.glob("tydiqa*.json")):
            if m := _TYDIQA_NAME.fullmatch(candidate.name):
                by_language.setdefault(m.group(1), []).append(candidate)
        if not by_language:
            raise read.fail(f"no files match {path}/tydiqa.goldp.<lang>.<split>.json or tydiqa.<lang>.<split>.json")
        wanted = source.languages or ([source.language] if source.language else sorted(by_language))
        paths = {}
        for lang in wanted:
            candidates = by_language.get(lang, [])
            if len(candidates) != 1:
                what = "no file" if not candidates else f"several files ({', '.join(p.name for p in candidates)})"
                raise read.fail(f"{path} has {what} for language '{lang}'; point path at one file")
            paths[lang] = candidates[0]
    else:
        raise read.fail(f"{path} does not exist (expected a tydiqa.goldp.<lang>.<split>.json file or a directory)")
    return _read_monolingual(read, paths)


def _read_squad(read: _Read, location: str) -> list[QAExample]:
    if read.source.language is None:
        raise read.fail("plain SQuAD files carry no language; set 'language' (e.g. language: en)")
    path = resolve_path(location)
    if not path.is_file():
        raise read.fail(f"file {path} does not exist (expected one SQuAD v1.1 JSON file)")
    return _read_monolingual(read, {read.source.language: path})


def _read_monolingual(read: _Read, paths: dict[str, Path]) -> list[QAExample]:
    examples = []
    for q, c in read.requested_cells(list(paths)):
        if q != c:
            raise read.fail(f"pairs asks for {q}-{c}, but this format has only same-language cells")
        parsed = read.parse(paths[c])
        examples += read.build_cell((q, c), parsed, parsed)
    return examples


_READERS = {"xquad": _read_xquad, "mlqa": _read_mlqa, "tydiqa": _read_tydiqa, "squad": _read_squad}


def read_source(source: SourceConfig, data: DataConfig, *, epoch: int = 0) -> ReadResult:
    """Read one QA source into examples, one block per (question language, context language) cell.

    With ``source.sampling`` the examples are the cross-lingual sample instead (question by question,
    see :mod:`xdist.tasks.qa.sampling`), drawn for ``epoch`` when ``sampling.per_epoch`` (else ``epoch`` is
    ignored), and :attr:`ReadResult.sampling` reports what was drawn.

    ``source.path`` is resolved against ``data.root`` (see :func:`resolve_path`; ``${VAR}`` references
    are expanded, a relative root is relative to the working directory); ``data.bad_records``
    decides whether a bad record stops the read or is skipped and counted; ``data.title_split`` is the
    article split behind ``source.articles``. Raises :class:`DataError` for missing files, malformed
    JSON, structural errors, bad records under ``error``, and a source that yields no example at all.
    """
    read = _Read(source=source, data=data, epoch=epoch)
    # Configs built in code (not loaded from YAML) may still hold ${VAR} defaults such as the data root.
    location = join_root(expand_env(source.path, "path"), expand_env(data.root, "data.root"))
    examples = _READERS[source.format](read, location)
    for note in read.notes:
        log.info("source %s: %s", source.name, note)
    if read.skipped.total:
        log.warning("source %s: %s", source.name, read.skipped.summary())
    if read.sampling is not None:
        log.info("source %s: %s", source.name, read.sampling.summary())
    if not examples:
        raise read.fail(
            f"no examples from {location} (articles: {source.articles}, pairs: {source.pairs}; "
            f"{read.skipped.summary()})"
        )
    return ReadResult(examples=examples, skipped=read.skipped, notes=read.notes, sampling=read.sampling)
