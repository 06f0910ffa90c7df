"""Raw QA readers: XQuAD cells and article split, MLQA, TyDi QA, SQuAD, bad input, URLs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import random
import threading
from pathlib import Path

import pytest

from xdist.config import ConfigError, DataConfig, SourceConfig, TitleSplitConfig
from xdist.data.sources import MAX_SKIP_MESSAGES, DataError, SkipReport, resolve_path
from xdist.tasks.qa.readers import read_source, split_titles, title_is_eval

XQUAD_LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]


def raw_records(path: Path) -> list[dict]:
    """Reference flattening of a SQuAD v1.1 file, written independently of the reader."""
    records = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                records.append({**qa, "context": paragraph["context"], "title": article.get("title")})
    return records


def squad_json(articles: list[tuple[str | None, list[tuple[str, list[tuple[str, str, list]]]]]]) -> dict:
    """Build SQuAD JSON from [(title, [(context, [(id, question, [(text, start), ...]), ...]), ...]), ...]."""
    data = []
    for title, paragraphs in articles:
        article: dict = {"paragraphs": []}
        if title is not None:
            article["title"] = title
        for context, qas in paragraphs:
            article["paragraphs"].append({
                "context": context,
                "qas": [
                    {"id": qid, "question": question,
                     "answers": [{"text": text, "answer_start": start} for text, start in answers]}
                    for qid, question, answers in qas
                ],
            })
        data.append(article)
    return {"version": "1.1", "data": data}


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def small_squad(lang: str = "en", ids=("a", "b", "c")) -> dict:
    """Three questions over one paragraph; question and context texts carry the language."""
    context = f"[{lang}] Paris is the capital of France. Berlin is the capital of Germany."
    qas = [
        (qid, f"[{lang}] question {qid}?", [(city, context.index(city))])
        for qid, city in zip(ids, ["Paris", "Berlin", "France", "Germany"], strict=False)
    ]
    return squad_json([("Capitals", [(context, qas)])])


def data_config(root, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), **kwargs)


# --------------------------------------------------------------------------------------------------
# XQuAD (real files)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xquad_diagonal(data_dir):
    return read_source(SourceConfig(name="xquad", format="xquad", path="xquad"), data_config(data_dir))


def test_xquad_diagonal_matches_every_file(data_dir, xquad_diagonal):
    by_cell: dict[tuple[str, str], list] = {}
    for example in xquad_diagonal.examples:
        by_cell.setdefault(example.cell, []).append(example)
    assert list(by_cell) == [(lang, lang) for lang in XQUAD_LANGUAGES]
    assert xquad_diagonal.skipped.total == 0
    for lang in XQUAD_LANGUAGES:
        raw = raw_records(data_dir / "xquad" / f"xquad.{lang}.json")
        examples = by_cell[(lang, lang)]
        assert [e.id for e in examples] == [r["id"] for r in raw]
        for example, record in zip(examples, raw, strict=True):
            assert example.question == record["question"] and example.context == record["context"]
            assert [(a.text, a.start) for a in example.answers] == [
                (a["text"], a["answer_start"]) for a in record["answers"]
            ]
            assert example.title == record["title"] and example.source == f"xquad:xquad.{lang}.json"


def test_xquad_cross_lingual_cells_take_question_and_context_from_their_files(data_dir):
    result = read_source(
        SourceConfig(name="xquad", format="xquad", path="xquad", pairs="en-de,de-en,zh-ar"), data_config(data_dir)
    )
    raw = {lang: {r["id"]: r for r in raw_records(data_dir / "xquad" / f"xquad.{lang}.json")}
           for lang in ("en", "de", "zh", "ar")}
    cells = {}
    for example in result.examples:
        cells.setdefault(example.cell, []).append(example)
    assert list(cells) == [("en", "de"), ("de", "en"), ("zh", "ar")]
    for (q, c), examples in cells.items():
        assert [e.id for e in examples] == list(raw[c])  # context file order
        assert len({e.uid for e in examples}) == len(examples)
        for example in examples:
            assert example.question == raw[q][example.id]["question"]
            assert example.context == raw[c][example.id]["context"]
            assert example.answers[0].text == raw[c][example.id]["answers"][0]["text"]
            assert example.question_lang == q and example.context_lang == c
    assert cells[("en", "de")][0].question != cells[("de", "en")][0].question


def test_xquad_pairs_all_builds_the_full_matrix(data_dir):
    result = read_source(
        SourceConfig(name="x", format="xquad", path="xquad", languages=["en", "de", "hi"], pairs="all"),
        data_config(data_dir),
    )
    cells = list(dict.fromkeys(e.cell for e in result.examples))
    assert cells == [(q, c) for q in ("en", "de", "hi") for c in ("en", "de", "hi")]
    assert len(result.examples) == 9 * 1190


def test_pairs_must_name_loaded_languages_and_be_well_formed(data_dir):
    source = SourceConfig(name="x", format="xquad", path="xquad", languages=["en", "de"], pairs="en-fr")
    with pytest.raises(DataError, match="'fr'"):
        read_source(source, data_config(data_dir))
    with pytest.raises(ConfigError, match="pairs"):
        SourceConfig(name="x", format="xquad", path="xquad", pairs="en_de")


def test_article_split_is_disjoint_complete_and_identical_across_languages(data_dir):
    def read(articles, seed=0):
        data = data_config(data_dir, title_split=TitleSplitConfig(eval_fraction=0.25, seed=seed))
        source = SourceConfig(name="x", format="xquad", path="xquad", languages=["en", "de", "th"],
                              pairs="en-de,de-en,th-th", articles=articles)
        return read_source(source, data).examples

    train, held_out, everything = read("train"), read("eval"), read("all")
    titles = {e.title for e in everything}
    assert len(titles) == 48
    for cell in [("en", "de"), ("de", "en"), ("th", "th")]:
        train_titles = {e.title for e in train if e.cell == cell}
        eval_titles = {e.title for e in held_out if e.cell == cell}
        assert train_titles and eval_titles and not train_titles & eval_titles
        assert train_titles | eval_titles == titles
        assert eval_titles == set(split_titles(sorted(titles), TitleSplitConfig())[1])
    # The question ids of one side never appear on the other, in any cell.
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert len(train) + len(held_out) == len(everything)
    assert [e.uid for e in read("eval")] == [e.uid for e in held_out]  # deterministic
    assert {e.title for e in read("eval", seed=1)} != {e.title for e in held_out}


def test_split_titles_rule_is_per_title_and_order_free():
    split = TitleSplitConfig(eval_fraction=0.25, seed=7)
    titles = [f"Article_{i}" for i in range(2000)]
    train, held_out = split_titles(titles, split)
    assert not set(train) & set(held_out) and len(train) + len(held_out) == len(titles)
    assert abs(len(held_out) / len(titles) - 0.25) < 0.03  # binomial: 3 standard deviations
    shuffled = titles[:]
    random.Random(3).shuffle(shuffled)
    assert set(split_titles(shuffled + titles[:10], split)[1]) == set(held_out)
    assert set(split_titles(titles[:100], split)[1]) == set(held_out) & set(titles[:100])
    # The documented rule, computed independently.
    for title in titles[:50]:
        u = int.from_bytes(hashlib.sha256(f"7\n{title}".encode()).digest()[:8], "big") / 2**64
        assert title_is_eval(title, split) == (u < 0.25)


def test_max_examples_keeps_the_first_ids_of_every_cell(data_dir):
    result = read_source(
        SourceConfig(name="x", format="xquad", path="xquad", pairs="en-de,de-en", max_examples=5),
        data_config(data_dir),
    )
    first_ids = [r["id"] for r in raw_records(data_dir / "xquad" / "xquad.de.json")[:5]]
    assert [e.id for e in result.examples if e.cell == ("en", "de")] == first_ids
    assert [e.id for e in result.examples if e.cell == ("de", "en")] == first_ids


def test_parallel_ids_must_line_up(tmp_path):
    en = write_json(tmp_path / "xquad.en.json", small_squad("en", ids=("a", "b", "c")))
    de = write_json(tmp_path / "xquad.de.json", small_squad("de", ids=("a", "c")))
    data = data_config(tmp_path)
    # Monolingual cells need no matching.
    assert len(read_source(SourceConfig(name="x", format="xquad", path="."), data).examples) == 5
    with pytest.raises(DataError) as err:
        read_source(SourceConfig(name="x", format="xquad", path=".", pairs="en-de"), data)
    assert "'b'" in str(err.value) and str(en) in str(err.value) and str(de) in str(err.value)


def test_parallel_cells_skip_a_bad_record_only_where_its_answer_is_used(tmp_path):
    write_json(tmp_path / "xquad.en.json", small_squad("en"))
    broken = small_squad("de")
    broken["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1
    write_json(tmp_path / "xquad.de.json", broken)
    result = read_source(
        SourceConfig(name="x", format="xquad", path=".", pairs="en-de,de-en"), data_config(tmp_path, bad_records="skip")
    )
    assert [e.id for e in result.examples if e.cell == ("en", "de")] == ["a", "c"]
    assert [e.id for e in result.examples if e.cell == ("de", "en")] == ["a", "b", "c"]
    assert result.skipped.counts == {"answer_offset_mismatch": 1}


# --------------------------------------------------------------------------------------------------
# TyDi QA GoldP, MLQA, plain SQuAD
# --------------------------------------------------------------------------------------------------


def test_tydiqa_english_train(data_dir):
    path = data_dir / "tydiqa-goldp" / "tydiqa.goldp.en.train.json"
    result = read_source(SourceConfig(name="tydiqa-en", format="tydiqa", path=str(path)), data_config(data_dir))
    raw = raw_records(path)
    assert len(raw) == 3696
    assert len(result.examples) == len(raw)
    assert {e.cell for e in result.examples} == {("en", "en")}
    assert all(e.title is None for e in result.examples)
    assert [e.question for e in result.examples] == [r["question"] for r in raw]
    # The XTREME copy repeats ids; they are made unique, not dropped, and the renaming is reported.
    assert len({e.uid for e in result.examples}) == len(raw)
    assert any("repeated question ids" in note for note in result.notes)
    with pytest.raises(DataError, match="TyDi QA GoldP has none"):
        read_source(SourceConfig(name="t", format="tydiqa", path=str(path), articles="train"), data_config(data_dir))


def test_tydiqa_languages_come_from_file_names_or_the_config(tmp_path):
    write_json(tmp_path / "dev" / "tydiqa.goldp.sw.dev.json", small_squad("sw"))
    write_json(tmp_path / "dev" / "tydiqa.fi.dev.json", small_squad("fi"))
    result = read_source(SourceConfig(name="t", format="tydiqa", path="dev"), data_config(tmp_path))
    assert [e.cell for e in result.examples] == [("fi", "fi")] * 3 + [("sw", "sw")] * 3
    assert all(e.context.startswith(f"[{e.context_lang}]") for e in result.examples)

    write_json(tmp_path / "mydata.json", small_squad("ko"))
    with pytest.raises(DataError, match="cannot tell the language of mydata.json"):
        read_source(SourceConfig(name="t", format="tydiqa", path="mydata.json"), data_config(tmp_path))
    source = SourceConfig(name="t", format="tydiqa", path="mydata.json", language="ko")
    result = read_source(source, data_config(tmp_path))
    assert {e.cell for e in result.examples} == {("ko", "ko")}

    write_json(tmp_path / "dev" / "tydiqa.goldp.sw.train.json", small_squad("sw"))
    with pytest.raises(DataError, match="several files"):
        read_source(SourceConfig(name="t", format="tydiqa", path="dev"), data_config(tmp_path))


def write_mlqa(directory: Path, split: str, cells) -> None:
    for q, c in cells:
        obj = small_squad(c)
        for qa in obj["data"][0]["paragraphs"][0]["qas"]:
            qa["question"] = f"[{q}] question {qa['id']}?"
        write_json(directory / f"{split}-context-{c}-question-{q}.json", obj)


def test_mlqa_cells_come_from_file_names(tmp_path):
    write_mlqa(tmp_path / "dev", "dev", [("en", "en"), ("en", "de"), ("de", "en"), ("de", "de"), ("es", "es")])
    data = data_config(tmp_path)

    every = read_source(SourceConfig(name="m", format="mlqa", path="dev", languages=["en", "de"], pairs="all"), data)
    cells = list(dict.fromkeys(e.cell for e in every.examples))
    assert cells == [("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")]
    for example in every.examples:
        assert example.question.startswith(f"[{example.question_lang}]")
        assert example.context.startswith(f"[{example.context_lang}]")

    diagonal = read_source(SourceConfig(name="m", format="mlqa", path="dev", pairs="diagonal"), data)
    assert list(dict.fromkeys(e.cell for e in diagonal.examples)) == [("de", "de"), ("en", "en"), ("es", "es")]

    # Unset pairs: every cell file found, as MLQA distributes them.
    found = read_source(SourceConfig(name="m", format="mlqa", path="dev"), data)
    assert list(dict.fromkeys(e.cell for e in found.examples)) == [
        ("de", "de"), ("de", "en"), ("en", "de"), ("en", "en"), ("es", "es")]

    single = read_source(SourceConfig(name="m", format="mlqa", path="dev/dev-context-de-question-en.json"), data)
    assert {e.cell for e in single.examples} == {("en", "de")}

    with pytest.raises(DataError, match="dev-context-es-question-en.json does not exist"):
        read_source(SourceConfig(name="m", format="mlqa", path="dev", pairs="en-es"), data)
    write_mlqa(tmp_path / "dev", "test", [("en", "en")])
    with pytest.raises(DataError, match="mixes splits"):
        read_source(SourceConfig(name="m", format="mlqa", path="dev"), data)


def test_plain_squad_needs_a_language(tmp_path):
    write_json(tmp_path / "train.json", small_squad("en"))
    with pytest.raises(DataError, match="set 'language'"):
        read_source(SourceConfig(name="s", format="squad", path="train.json"), data_config(tmp_path))
    source = SourceConfig(name="s", format="squad", path="train.json", language="en")
    result = read_source(source, data_config(tmp_path))
    assert [e.id for e in result.examples] == ["a", "b", "c"] and result.examples[0].title == "Capitals"
    untitled = small_squad("en")
    del untitled["data"][0]["title"]
    write_json(tmp_path / "untitled.json", untitled)
    source = SourceConfig(name="s", format="squad", path="untitled.json", language="en", articles="eval")
    with pytest.raises(DataError, match=r"untitled.json: data\[0\].paragraphs\[0\].qas\[0\] has no title"):
        read_source(source, data_config(tmp_path))


def test_single_xquad_file_and_env_expansion(tmp_path, monkeypatch):
    write_json(tmp_path / "xq" / "xquad.de.json", small_squad("de"))
    monkeypatch.setenv("XQ_ROOT", str(tmp_path))
    source = SourceConfig(name="x", format="xquad", path="${XQ_SUB:-xq}/xquad.de.json")
    result = read_source(source, DataConfig(root="${XQ_ROOT}"))
    assert {e.cell for e in result.examples} == {("de", "de")} and len(result.examples) == 3


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def read_squad_file(tmp_path, bad_records="error"):
    source = SourceConfig(name="s", format="squad", path="bad.json", language="en")
    return read_source(source, data_config(tmp_path, bad_records=bad_records))


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"paragraphs": []},\n  {"paragraphs": [}\n]}\n')
    with pytest.raises(DataError) as err:
        read_squad_file(tmp_path)
    assert str(path) in str(err.value) and "line 3, column 19" in str(err.value)


def test_missing_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nothere.json'} does not exist"):
        read_source(SourceConfig(name="s", format="squad", path="nothere.json", language="en"), data_config(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no files match .*empty/xquad\.<lang>\.json"):
        read_source(SourceConfig(name="x", format="xquad", path="empty"), data_config(tmp_path))
    write_json(tmp_path / "xq" / "xquad.en.json", small_squad())
    with pytest.raises(DataError, match=r"xq/xquad\.fr\.json does not exist \(languages found: \['en'\]\)"):
        read_source(SourceConfig(name="x", format="xquad", path="xq", languages=["en", "fr"]), data_config(tmp_path))
    with pytest.raises(DataError, match="directory .*missing does not exist"):
        read_source(SourceConfig(name="x", format="xquad", path="missing"), data_config(tmp_path))


def _drop(path: list, key: str):
    def mutate(obj):
        node = obj
        for step in path:
            node = node[step]
        del node[key]
    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda obj: obj.pop("data"), "data: expected a SQuAD v1.1 object"),
        (_drop(["data", 0], "paragraphs"), r"data\[0\]\.paragraphs: missing"),
        (_drop(["data", 0, "paragraphs", 0], "context"), r"data\[0\]\.paragraphs\[0\]\.context: missing"),
        (_drop(["data", 0, "paragraphs", 0], "qas"), r"data\[0\]\.paragraphs\[0\]\.qas: missing"),
        (lambda obj: obj["data"][0].update(paragraphs={}), r"data\[0\]\.paragraphs: expected a list, got dict"),
    ],
)
def test_structural_errors_name_file_and_json_path(tmp_path, mutate, expected):
    obj = small_squad()
    mutate(obj)
    path = write_json(tmp_path / "bad.json", obj)
    for mode in ("error", "skip"):  # not SQuAD at all: an error even when skipping bad records
        with pytest.raises(DataError, match=expected) as err:
            read_squad_file(tmp_path, mode)
        assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "reason", "field"),
    [
        (lambda qa: qa.pop("answers"), "bad_record", r"data[0].paragraphs[0].qas[1].answers: missing"),
        (lambda qa: qa.update(answers=[]), "no_answers", r"data[0].paragraphs[0].qas[1].answers: empty"),
        (lambda qa: qa.pop("question"), "bad_record", r"data[0].paragraphs[0].qas[1].question"),
        (lambda qa: qa["answers"][0].update(answer_start="12"), "bad_record", "answers[0].answer_start: expected an"),
        (lambda qa: qa["answers"][0].update(answer_start=3), "answer_offset_mismatch",
         "qas[1].answers[0].answer_start: context[3:9] is"),
        (lambda qa: qa["answers"][0].update(answer_start=10_000), "answer_offset_mismatch", "context[10000:10006]"),
        (lambda qa: qa.update(is_impossible=True), "unanswerable", "is_impossible"),
    ],
)
def test_bad_records_stop_or_are_skipped_and_reported(tmp_path, mutate, reason, field):
    obj = small_squad()
    mutate(obj["data"][0]["paragraphs"][0]["qas"][1])
    path = write_json(tmp_path / "bad.json", obj)
    with pytest.raises(DataError) as err:
        read_squad_file(tmp_path, "error")
    message = str(err.value)
    assert str(path) in message and "record id 'b'" in message and field in message

    result = read_squad_file(tmp_path, "skip")
    assert [e.id for e in result.examples] == ["a", "c"]
    assert result.skipped.counts == {reason: 1}
    assert str(path) in result.skipped.messages[0] and "'b'" in result.skipped.messages[0]
    assert "1 records skipped" in result.skipped.summary() and field in result.skipped.summary()


def test_a_source_with_nothing_left_is_an_error(tmp_path):
    obj = small_squad()
    for qa in obj["data"][0]["paragraphs"][0]["qas"]:
        qa["answers"] = []
    write_json(tmp_path / "bad.json", obj)
    with pytest.raises(DataError, match=r"no examples .*3 records skipped \(no_answers: 3\)"):
        read_squad_file(tmp_path, "skip")


def test_skip_report_merges_counts_and_caps_messages():
    first, second = SkipReport(), SkipReport()
    for i in range(MAX_SKIP_MESSAGES - 2):
        first.add("answer_offset_mismatch", f"first {i}")
    for i in range(5):
        second.add("no_answers", f"second {i}")
    second.add("answer_offset_mismatch", "second x")
    merged = first.merge(second)
    assert merged is first
    assert merged.counts == {"answer_offset_mismatch": MAX_SKIP_MESSAGES - 1, "no_answers": 5}
    assert merged.total == MAX_SKIP_MESSAGES + 4
    assert merged.messages[-2:] == ["second 0", "second 1"] and len(merged.messages) == MAX_SKIP_MESSAGES
    assert "... and 4 more" in merged.summary()
    assert SkipReport().summary() == "no records skipped"


# --------------------------------------------------------------------------------------------------
# Paths and URLs
# --------------------------------------------------------------------------------------------------


def test_resolve_local_paths(tmp_path, monkeypatch):
    assert resolve_path("xquad/xquad.en.json", tmp_path) == tmp_path / "xquad" / "xquad.en.json"
    assert resolve_path(str(tmp_path / "a.json"), "/somewhere/else") == tmp_path / "a.json"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/a.json", "/root") == tmp_path / "a.json"
    assert resolve_path((tmp_path / "b c.json").as_uri(), "/root") == tmp_path / "b c.json"


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A directory served by a local HTTP server on a free port; downloads cached under tmp_path."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("XDIST_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_urls_are_downloaded_once_into_the_cache(tmp_path, http_root):
    served, url, server = http_root
    write_json(served / "xquad" / "xquad.en.json", small_squad("en"))
    local = resolve_path(f"{url}/xquad/xquad.en.json")
    assert local.is_relative_to(tmp_path / "cache" / "downloads") and local.name == "xquad.en.json"
    assert json.loads(local.read_text()) == small_squad("en")
    assert resolve_path("xquad/xquad.en.json", url) == local  # relative to a URL root: the same URL
    server.shutdown()  # a second call needs no network
    assert resolve_path(f"{url}/xquad/xquad.en.json") == local


def test_read_source_from_a_url_root(http_root):
    served, url, _ = http_root
    for lang in ("en", "de"):
        write_json(served / "xquad" / f"xquad.{lang}.json", small_squad(lang))
    source = SourceConfig(name="x", format="xquad", path="xquad", languages=["en", "de"], pairs="de-en")
    result = read_source(source, DataConfig(root=url))
    assert [e.question for e in result.examples] == ["[de] question a?", "[de] question b?", "[de] question c?"]
    with pytest.raises(DataError, match="URL cannot be listed, so set 'languages'"):
        read_source(SourceConfig(name="x", format="xquad", path="xquad"), DataConfig(root=url))
    # Formats that read the language from the file name still do after a download.
    write_json(served / "tydiqa.goldp.sw.dev.json", small_squad("sw"))
    write_json(served / "test-context-de-question-en.json", small_squad("de"))
    tydiqa = read_source(SourceConfig(name="t", format="tydiqa", path=f"{url}/tydiqa.goldp.sw.dev.json"), DataConfig())
    mlqa = read_source(SourceConfig(name="m", format="mlqa", path="test-context-de-question-en.json"), DataConfig(url))
    assert {e.cell for e in tydiqa.examples} == {("sw", "sw")} and {e.cell for e in mlqa.examples} == {("en", "de")}
    with pytest.raises(DataError, match="URL directory cannot be listed"):
        read_source(SourceConfig(name="m", format="mlqa", path="dev"), DataConfig(root=url))


def test_failed_downloads_name_the_url(http_root):
    _, url, server = http_root
    with pytest.raises(DataError, match=f"download of {url}/missing.json failed: HTTP 404"):
        resolve_path(f"{url}/missing.json")
    server.shutdown()
    server.server_close()
    with pytest.raises(DataError, match=f"download of {url}/gone.json failed"):
        resolve_path(f"{url}/gone.json")
