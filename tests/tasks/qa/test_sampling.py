"""Cross-lingual sampling: the authors' pair rules, determinism, provenance, article split, shards and
the per-epoch shard sets read by the stream."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.tasks.qa.test_readers import raw_records, small_squad, write_json
from xdist.config import ConfigError, DataConfig, JobConfig, SamplingConfig, SourceConfig, TitleSplitConfig, build
from xdist.data.epochs import EPOCH_INDEX_NAME, load_epoch_index
from xdist.data.shards import MANIFEST_NAME, ShardError, iter_samples, load_manifest
from xdist.data.sources import DataError
from xdist.data.stream import StreamError, TrainStream
from xdist.tasks.qa.readers import read_source, title_is_eval
from xdist.tasks.qa.sampling import question_languages

MLQA_LANGUAGES = ["en", "es", "de", "ar", "vi", "hi", "zh"]


def sampled(data_dir: Path, languages=MLQA_LANGUAGES, path="xquad", data: DataConfig | None = None, epoch=0,
            **sampling_and_source):
    """read_source of an XQuAD source with sampling; keyword arguments go to SamplingConfig or SourceConfig."""
    source_keys = {"articles", "max_examples", "languages"}
    source_kw = {k: v for k, v in sampling_and_source.items() if k in source_keys}
    sampling_kw = {k: v for k, v in sampling_and_source.items() if k not in source_keys}
    source = SourceConfig(name="xq", format="xquad", path=path, languages=languages,
                          sampling=SamplingConfig(**sampling_kw), **source_kw)
    return read_source(source, data or DataConfig(root=str(data_dir)), epoch=epoch)


def cells_by_question(examples) -> dict[str, set[tuple[str, str]]]:
    cells = defaultdict(set)
    for example in examples:
        assert example.cell not in cells[example.id], f"pair {example.cell} of {example.id} emitted twice"
        cells[example.id].add(example.cell)
    return dict(cells)


def languages_of(cells: set[tuple[str, str]]) -> set[str]:
    questions, contexts = {q for q, _ in cells}, {c for _, c in cells}
    assert questions == contexts  # S_q x S_q (or its diagonal): both sides range over the same set
    return questions


# --------------------------------------------------------------------------------------------------
# The authors' pair rules on the real XQuAD files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ntl", "pairs"), [(5, 36), (6, 49), (9, 49), (0, 7), (2, 9)])
def test_pivot_centric_pairs_per_question(data_dir, ntl, pairs):
    read = sampled(data_dir, ntl=ntl)
    by_question = cells_by_question(read.examples)
    assert len(by_question) == 1190 and len(read.examples) == 1190 * pairs
    assert read.sampling.pairs_per_question == {pairs: 1190} and read.sampling.examples == len(read.examples)
    frequency = Counter()
    for cells in by_question.values():
        chosen = languages_of(cells)
        frequency.update(chosen)
        if ntl == 0:
            assert chosen == set(MLQA_LANGUAGES) and cells == {(lang, lang) for lang in chosen}
        else:
            assert "en" in chosen and len(chosen) == min(ntl + 1, 7)
            assert cells == {(q, c) for q in chosen for c in chosen}  # every ordered pair, diagonal included
    assert frequency["en"] == 1190
    if 0 < ntl < 6:
        # Uniform without replacement: each of the 6 others is drawn with probability ntl/6 (5 sd band).
        p = ntl / 6
        for lang in MLQA_LANGUAGES[1:]:
            assert abs(frequency[lang] - 1190 * p) < 5 * math.sqrt(1190 * p * (1 - p)), (lang, frequency)
    assert sum(read.sampling.cells.values()) == len(read.examples)
    assert read.sampling.cells == dict(Counter(f"{e.question_lang}-{e.context_lang}" for e in read.examples))


@pytest.mark.parametrize(("ntl", "size"), [(3, 3), (6, 6), (7, 7), (0, 7)])
def test_non_pivot_centric_draws_from_all_languages(data_dir, ntl, size):
    read = sampled(data_dir, ntl=ntl, pivot_centric=False, max_examples=600)
    by_question = cells_by_question(read.examples)
    assert len(by_question) == 600
    with_english = 0
    for cells in by_question.values():
        chosen = languages_of(cells)
        assert len(chosen) == size
        assert len(cells) == (size if ntl == 0 else size * size)
        with_english += "en" in chosen
    if ntl == 3:
        # The pivot is one candidate among 7, not forced: in about 3/7 of the sets.
        p = 3 / 7
        assert abs(with_english - 600 * p) < 5 * math.sqrt(600 * p * (1 - p))


def test_question_languages_depend_on_seed_epoch_and_id_only():
    config = SamplingConfig(ntl=2, seed=11)
    draw = question_languages("q1", MLQA_LANGUAGES, config)
    assert draw == question_languages("q1", list(reversed(MLQA_LANGUAGES)), config)  # config order is irrelevant
    assert draw == question_languages("q1", MLQA_LANGUAGES, config, epoch=4)  # not per_epoch: epoch ignored
    ids = [f"q{i}" for i in range(200)]
    draws = [tuple(question_languages(q, MLQA_LANGUAGES, config)) for q in ids]
    assert len(set(draws)) > 10  # questions get different sets
    assert draws != [tuple(question_languages(q, MLQA_LANGUAGES, SamplingConfig(ntl=2, seed=12))) for q in ids]
    with pytest.raises(ValueError, match="sampling.pivot 'en' is not among"):
        question_languages("q1", ["de", "es"], config)


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_seed_same_pairs_different_seed_different_pairs(data_dir):
    first = cells_by_question(sampled(data_dir, ntl=3, seed=3).examples)
    assert first == cells_by_question(sampled(data_dir, ntl=3, seed=3).examples)
    other = cells_by_question(sampled(data_dir, ntl=3, seed=4).examples)
    assert other.keys() == first.keys()
    assert sum(other[q] != first[q] for q in first) > 900  # C(6,3) = 20 sets: most questions differ


def test_draw_is_independent_of_file_and_language_order(data_dir, tmp_path):
    # Copies of the files with articles, paragraphs and questions in reverse order.
    for lang in MLQA_LANGUAGES:
        raw = json.loads((data_dir / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        for article in raw["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"].reverse()
            article["paragraphs"].reverse()
        raw["data"].reverse()
        write_json(tmp_path / "reversed" / f"xquad.{lang}.json", raw)
    original = cells_by_question(sampled(data_dir, ntl=2).examples)
    reordered = sampled(tmp_path, path="reversed", languages=list(reversed(MLQA_LANGUAGES)), ntl=2).examples
    assert cells_by_question(reordered) == original
    assert [e.id for e in reordered[:1]] != [next(iter(original))]  # the files really were reordered


def test_per_epoch_draws_differ_by_epoch_and_repeat_exactly(data_dir):
    once = cells_by_question(sampled(data_dir, ntl=2, max_examples=300).examples)
    epochs = [cells_by_question(sampled(data_dir, ntl=2, per_epoch=True, max_examples=300, epoch=e).examples)
              for e in range(3)]
    assert epochs[0] == once  # epoch 0 of the per-epoch mode is the built-once draw
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert epochs[a].keys() == epochs[b].keys()
        assert sum(epochs[a][q] != epochs[b][q] for q in epochs[a]) > 200  # 15 possible sets per question
    again = cells_by_question(sampled(data_dir, ntl=2, per_epoch=True, max_examples=300, epoch=2).examples)
    assert again == epochs[2]
    report = sampled(data_dir, ntl=2, per_epoch=True, max_examples=5, epoch=2).sampling
    assert report.epoch == 2 and report.parameters["per_epoch"] is True
    assert sampled(data_dir, ntl=2, max_examples=5, epoch=2).sampling.epoch == 0  # built once: epoch 0's draw


# --------------------------------------------------------------------------------------------------
# Provenance, article split, max_examples
# --------------------------------------------------------------------------------------------------


def test_question_from_question_language_context_and_answers_from_context_language(data_dir):
    raw = {lang: {r["id"]: r for r in raw_records(data_dir / "xquad" / f"xquad.{lang}.json")}
           for lang in MLQA_LANGUAGES}
    read = sampled(data_dir, ntl=5)
    crossed = 0
    for example in read.examples:
        question, context = raw[example.question_lang][example.id], raw[example.context_lang][example.id]
        assert example.question == question["question"]
        assert example.context == context["context"] and example.title == context["title"]
        assert [(a.text, a.start) for a in example.answers] == [
            (a["text"], a["answer_start"]) for a in context["answers"]
        ]
        assert example.source.startswith(f"xq:xquad.{example.context_lang}.json")
        assert example.uid == f"{example.id}/{example.question_lang}-{example.context_lang}"
        crossed += example.question_lang != example.context_lang
    assert crossed == 1190 * 30  # 36 pairs per question, 6 of them on the diagonal
    assert read.skipped.total == 0


def test_no_pair_crosses_the_article_split(data_dir):
    split = TitleSplitConfig(eval_fraction=0.25, seed=0)
    data = DataConfig(root=str(data_dir), title_split=split)
    train = sampled(data_dir, ntl=5, articles="train", data=data).examples
    held_out = sampled(data_dir, ntl=5, articles="eval", data=data).examples
    raw = {lang: {r["id"]: r for r in raw_records(data_dir / "xquad" / f"xquad.{lang}.json")}
           for lang in MLQA_LANGUAGES}
    for examples, is_eval in ((train, False), (held_out, True)):
        for example in examples:
            for lang in example.cell:  # both sides of the pair lie on this side of the split
                assert title_is_eval(raw[lang][example.id]["title"], split) is is_eval
    train_titles, eval_titles = {e.title for e in train}, {e.title for e in held_out}
    assert train_titles and eval_titles and not train_titles & eval_titles
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert len(cells_by_question(train)) + len(cells_by_question(held_out)) == 1190


def test_parallel_files_that_disagree_on_an_article_side_are_refused(tmp_path):
    split = TitleSplitConfig()
    titles = [f"Article {i}" for i in range(50)]
    train_title = next(t for t in titles if not title_is_eval(t, split))
    eval_title = next(t for t in titles if title_is_eval(t, split))
    for lang, title in (("en", train_title), ("de", eval_title)):
        raw = small_squad(lang)
        raw["data"][0]["title"] = title
        write_json(tmp_path / "xq" / f"xquad.{lang}.json", raw)
    with pytest.raises(DataError, match=r"question id 'a' lies on both sides of the article split"):
        sampled(tmp_path, path="xq", languages=["en", "de"], ntl=1, articles="train")
    # Without a split there is nothing to disagree on.
    assert len(sampled(tmp_path, path="xq", languages=["en", "de"], ntl=1).examples) == 3 * 4


def test_max_examples_counts_questions_in_file_order(data_dir):
    read = sampled(data_dir, ntl=5, articles="train", max_examples=10)
    by_question = cells_by_question(read.examples)
    split = TitleSplitConfig()
    first_train_ids = [r["id"] for r in raw_records(data_dir / "xquad" / "xquad.en.json")
                       if not title_is_eval(r["title"], split)][:10]
    assert list(by_question) == first_train_ids
    assert read.sampling.questions == 10 and len(read.examples) == 360


def test_skipped_records_leave_out_only_their_pairs(tmp_path):
    write_json(tmp_path / "xq" / "xquad.en.json", small_squad("en"))
    broken = small_squad("de")
    broken["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1  # id 'b' is bad in de
    write_json(tmp_path / "xq" / "xquad.de.json", broken)
    read = sampled(tmp_path, path="xq", languages=["en", "de"], ntl=1,
                   data=DataConfig(root=str(tmp_path), bad_records="skip"))
    cells = cells_by_question(read.examples)
    assert cells["a"] == cells["c"] == {("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")}
    assert cells["b"] == {("en", "en"), ("de", "en")}  # the German question is fine; its context is not
    assert read.skipped.counts == {"answer_offset_mismatch": 1}
    assert read.sampling.pairs_per_question == {4: 2, 2: 1}


# --------------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "field", "message"), [
    ({"format": "tydiqa", "path": "t.json", "sampling": {}}, "sampling", "needs a parallel source"),
    ({"format": "mlqa", "path": "m", "sampling": {}}, "sampling", "needs a parallel source"),
    ({"format": "xquad", "path": "x", "pairs": "all", "sampling": {}}, "pairs", "cannot be combined with 'sampling'"),
    ({"format": "xquad", "path": "x", "sampling": {"ntl": -1}}, "sampling.ntl", "expected an integer >= 0"),
    ({"format": "xquad", "path": "x", "languages": ["de", "es"], "sampling": {"pivot": "en"}}, "sampling.pivot",
     "'en' is not among languages"),
    ({"format": "xquad", "path": "x", "sampling": {"pivot": "English"}}, "sampling.pivot", "language code"),
    ({"format": "xquad", "path": "x", "sampling": {"per_epoch": "yes"}}, "sampling.per_epoch", "true or false"),
])
def test_bad_sampling_configs_name_the_field(raw, field, message):
    with pytest.raises(ConfigError, match=rf"config field 'data\.train\[0\]\.{field}': .*{message}"):
        build(JobConfig, {"data": {"train": [{"name": "s", **raw}]}})


def test_non_pivot_centric_does_not_need_the_pivot(tmp_path):
    for lang in ("de", "es"):
        write_json(tmp_path / "xq" / f"xquad.{lang}.json", small_squad(lang))
    build(JobConfig, {"data": {"train": [{"name": "s", "format": "xquad", "path": "x", "languages": ["de", "es"],
                                          "sampling": {"pivot_centric": False}}]}})
    # The languages found on disk lack the pivot: the reader names the field.
    with pytest.raises(DataError, match=r"sampling\.pivot 'en' is not among the source's languages \['de', 'es'\]"):
        sampled(tmp_path, path="xq", languages=None, ntl=1)
    assert len(sampled(tmp_path, path="xq", languages=None, ntl=1, pivot_centric=False).examples) == 3


# --------------------------------------------------------------------------------------------------
# Shards: manifest counts, per-epoch sets and the stream
# --------------------------------------------------------------------------------------------------


def _job(data_dir: Path, tokenizer_path: Path, shards: Path, epochs: int = 1, **sampling) -> JobConfig:
    return build(JobConfig, {
        "data": {
            "root": str(data_dir), "shards": str(shards), "samples_per_shard": 8, "num_workers": 1,
            "shuffle_buffer": 4,
            "train": [{"name": "xquad", "format": "xquad", "path": "xquad", "languages": ["en", "de", "es", "zh"],
                       "articles": "train", "max_examples": 6, "sampling": {"ntl": 1, **sampling}}],
        },
        "features": {"tokenizer": str(tokenizer_path), "max_length": 64, "doc_stride": 24, "max_query_length": 24},
        "train": {"epochs": epochs},
    })


def test_prepare_counts_sampled_pairs_in_the_manifest(tmp_path, data_dir, tokenizer_path, mbert_tokenizer):
    from xdist.data.prepare import prepare
    from xdist.tasks.qa.features import featurize

    cfg = _job(data_dir, tokenizer_path, tmp_path / "shards")
    manifest = prepare(cfg, progress=False)
    read = read_source(cfg.data.train[0], cfg.data)
    features = featurize(read.examples, mbert_tokenizer, cfg.features).features
    assert manifest.total_samples == len(features) and len(read.examples) == 6 * 4
    assert manifest.groups == dict(Counter(f"{f.question_lang}-{f.context_lang}" for f in features))
    report = manifest.feature_stats["sampling"]["xquad"]
    assert report == read.sampling.to_dict()
    assert report["questions"] == 6 and report["pairs_per_question"] == {"4": 6}
    assert report["parameters"] == {"ntl": 1, "pivot": "en", "pivot_centric": True, "seed": 3, "per_epoch": False}
    assert manifest.config["data"]["train"][0]["sampling"]["ntl"] == 1
    assert not (tmp_path / "shards" / EPOCH_INDEX_NAME).exists()
    # Another seed is another data set: refused without overwrite, naming the change.
    cfg.data.train[0].sampling.seed = 4
    with pytest.raises(ShardError, match="config changed"):
        prepare(cfg, progress=False)


def test_per_epoch_sets_feed_the_stream_epoch_by_epoch(tmp_path, data_dir, tokenizer_path, caplog):
    from xdist.data.prepare import prepare, prepare_sets

    shards = tmp_path / "shards"
    cfg = _job(data_dir, tokenizer_path, shards, epochs=3, per_epoch=True)
    manifests = prepare_sets(cfg, progress=False)
    index = load_epoch_index(shards)
    assert index.sets == ["epoch-000", "epoch-001", "epoch-002"] and not (shards / MANIFEST_NAME).exists()
    assert index.samples == [m.total_samples for m in manifests]
    assert [s["xquad"]["epoch"] for s in index.sampling] == [0, 1, 2]
    uids = [{sample.example_uid for sample in iter_samples(m)} for m in manifests]
    for e, manifest in enumerate(manifests):
        assert manifest.directory == shards / f"epoch-{e:03d}"
        expected = sampled(data_dir, languages=["en", "de", "es", "zh"], ntl=1, per_epoch=True, articles="train",
                           max_examples=6, epoch=e)
        assert uids[e] == {example.uid for example in expected.examples}  # set e holds epoch e's draw
    assert uids[0] != uids[1] != uids[2]

    # Idempotent; a changed epoch count is refused, naming it.
    before = (shards / EPOCH_INDEX_NAME).stat().st_mtime_ns
    assert prepare(cfg, progress=False) == manifests[0]
    assert (shards / EPOCH_INDEX_NAME).stat().st_mtime_ns == before
    cfg.train.epochs = 2
    with pytest.raises(ShardError, match=r"epoch_sets: 3 -> 2"):
        prepare(cfg, progress=False)
    cfg.train.epochs = 3

    def stream(rank: int, world: int = 2) -> TrainStream:
        return TrainStream(shards, rank, world, 3, cfg.data, seed=5, tokenizer_path=tokenizer_path, max_length=64)

    ranks = [stream(0), stream(1)]
    assert ranks[0].num_shard_sets == 3
    assert ranks[0].total_batches(3) == sum(ranks[0].batches_in_epoch(e) for e in range(3))
    with caplog.at_level(logging.WARNING, logger="xdist.data.stream"):
        for epoch in range(4):  # epoch 3 wraps around to set 0, with a warning
            per_rank = [list(r.iter_epoch(epoch)) for r in ranks]
            counts = [len(batches) for batches in per_rank]
            assert counts == [ranks[0].batches_in_epoch(epoch)] * 2  # equal batches on every rank
            keys = {key for batches in per_rank for batch in batches for key in batch["keys"]}
            set_keys = {s.key for s in iter_samples(manifests[epoch % 3])}
            assert keys == set_keys  # every sample of the epoch's set, nothing from another set
    assert "only 3 per-epoch shard sets" in caplog.text

    # Exact resume in the middle of epoch 1.
    uninterrupted = [batch["keys"] for batch in stream(1).iter_epoch(1)]
    first = stream(1)
    iterator = first.iter_epoch(1)
    head = [next(iterator)["keys"] for _ in range(2)]
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (1, 2) and "shard_sets" in state
    resumed = stream(1)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert head + [batch["keys"] for batch in resumed] == uninterrupted
    # A single-set checkpoint cannot resume on per-epoch sets.
    single = {key: value for key, value in state.items() if key != "shard_sets"}
    with pytest.raises(StreamError, match="a single shard set"):
        stream(1).load_state_dict(single)

    # Switching layouts needs overwrite.
    flat = _job(data_dir, tokenizer_path, shards)
    with pytest.raises(ShardError, match="per-epoch shard sets"):
        prepare(flat, progress=False)
    prepare(flat, overwrite=True, progress=False)
    assert load_manifest(shards).total_samples > 0 and not (shards / EPOCH_INDEX_NAME).exists()
    assert not (shards / "epoch-000").exists()
