"""Classification readers on the real XNLI / PAWS-X / XCOPA files and on small files written here."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import pytest

from xdist.config import ConfigError, GroupSplitConfig, SourceConfig, build
from xdist.data.sources import DataError
from xdist.tasks.classification.readers import group_is_eval, read_classification_source


def source(**raw) -> SourceConfig:
    return build(SourceConfig, raw, "data.train[0]")


def by_language(examples):
    out = defaultdict(list)
    for e in examples:
        out[e.language].append(e)
    return out


def test_xnli_dev_rows_languages_labels_and_shared_instances(data_dir):
    result = read_classification_source(source(name="xnli", format="xnli", path="xnli-dev"), root=str(data_dir))
    langs = by_language(result.examples)
    assert len(langs) == 15 and result.languages == sorted(langs)
    assert {lang: len(rows) for lang, rows in langs.items()} == dict.fromkeys(langs, 2490)
    en, fr = langs["en"], langs["fr"]
    # Labels mapped in the Hugging Face xnli order: the first three rows are neutral, contradiction, entailment.
    assert [e.label for e in en[:3]] == [1, 2, 0]
    assert [e.label for e in fr[:3]] == [1, 2, 0]
    # Row i of every language is one instance; the uid adds the language.
    assert [e.instance for e in en] == [e.instance for e in fr]
    assert en[5].uid == f"{en[5].instance}/en" and len({e.uid for e in result.examples}) == 37350
    # Groups come from the English premise, identical in every language.
    assert en[0].text_a == "And he said, Mama, I'm home." and fr[0].group == en[0].text_a
    assert len({e.group for e in en}) == 830


def test_pawsx_and_xcopa_counts_and_labels(data_dir):
    paws = read_classification_source(source(name="pawsx", format="pawsx", path="pawsx-dev"), root=str(data_dir))
    langs = by_language(paws.examples)
    assert sorted(langs) == ["de", "en", "es", "fr", "ja", "ko", "zh"]
    assert all(len(rows) == 2000 for rows in langs.values())
    assert {e.label for e in paws.examples} == {0, 1} and langs["en"][0].label == 1
    copa = read_classification_source(source(name="xcopa", format="xcopa", path="xcopa", split="test"),
                                      root=str(data_dir))
    langs = by_language(copa.examples)
    assert len(langs) == 12 and all(len(rows) == 500 for rows in langs.values())
    first = langs["et"][0]
    assert first.choices and len(first.choices) == 2 and first.question in ("cause", "effect")
    assert first.label in (0, 1) and first.instance == langs["en"][0].instance == "xcopa:0"
    with pytest.raises(DataError, match="splits \\['test', 'train', 'val'\\]; set 'split'"):
        read_classification_source(source(name="xcopa", format="xcopa", path="xcopa"), root=str(data_dir))


def test_unlabelled_xnli_test(data_dir):
    result = read_classification_source(
        source(name="u", format="xnli", path="xnli-test-unlabelled", labelled=False, languages=["en", "sw"]),
        root=str(data_dir),
    )
    assert len(result.examples) == 2 * 5010 and all(e.label is None for e in result.examples)


def test_grouped_split_never_separates_a_premise_and_is_the_same_in_every_language(data_dir):
    sides = {}
    for groups in ("train", "eval"):
        cfg = source(name="xnli", format="xnli", path="xnli-dev", languages=["en", "de", "zh"], groups=groups,
                     group_split={"eval_fraction": 0.3, "seed": 7})
        sides[groups] = by_language(read_classification_source(cfg, root=str(data_dir)).examples)
    train_en, eval_en = sides["train"]["en"], sides["eval"]["en"]
    assert len(train_en) + len(eval_en) == 2490
    assert {e.text_a for e in train_en}.isdisjoint({e.text_a for e in eval_en})
    for groups in ("train", "eval"):
        instances = [[e.instance for e in sides[groups][lang]] for lang in ("en", "de", "zh")]
        assert instances[0] == instances[1] == instances[2]
    # Every premise group keeps its three hypotheses together; about 30 % of the 830 groups held out.
    held_out = {e.group for e in eval_en}
    assert 0.24 < len(held_out) / 830 < 0.36 and len(eval_en) == 3 * len(held_out)
    assert all(group_is_eval(g, build_split(0.3, 7)) for g in held_out)


def test_a_subset_of_the_languages_splits_as_the_whole_source_does(data_dir):
    # A teacher trained on de alone must not train on the instances its student (en, de, zh) holds out:
    # the groups are keyed by the en premise even when en is not read.
    for groups in ("train", "eval"):
        cfg = source(name="xnli", format="xnli", path="xnli-dev", languages=["en", "de", "zh"], groups=groups)
        whole = by_language(read_classification_source(cfg, root=str(data_dir)).examples)
        for lang in ("de", "zh"):
            alone = read_classification_source(
                source(name="xnli", format="xnli", path="xnli-dev", languages=[lang], groups=groups),
                root=str(data_dir),
            ).examples
            assert [e.uid for e in alone] == [e.uid for e in whole[lang]]
            assert [e.group for e in alone] == [e.group for e in whole["en"]]  # the en premise, not the de one


def test_a_split_keyed_by_a_language_the_source_lacks_is_refused(xnli_copy):
    (xnli_copy / "dev-en.tsv").unlink()
    cfg = source(name="x", format="xnli", path=str(xnli_copy), languages=["de"], groups="train")
    with pytest.raises(DataError, match=r"keys each instance by its 'en' copy \(text_a\).*set 'group_language'"):
        read_classification_source(cfg)
    keyed_by_fr = source(name="x", format="xnli", path=str(xnli_copy), languages=["de"], groups="train",
                         group_language="fr")
    both = source(name="x", format="xnli", path=str(xnli_copy), languages=["fr", "de"], groups="train",
                  group_language="fr")
    assert ([e.uid for e in read_classification_source(keyed_by_fr).examples]
            == [e.uid for e in by_language(read_classification_source(both).examples)["de"]])
    # Without a split the key language is not needed.
    assert len(read_classification_source(source(name="x", format="xnli", path=str(xnli_copy),
                                                 languages=["de"])).examples) == 2490


def test_the_key_copy_of_a_patterned_source_keys_the_split_and_drops_its_bad_rows(tmp_path):
    # Premises repeat in pairs in en (rows 2k and 2k+1 share one) but are all distinct in sw: keyed by en,
    # each pair falls on one side together, whichever languages are read.
    for lang in ("en", "sw"):
        rows = [{"text_a": f"{lang} premise {i // 2 if lang == 'en' else i}", "text_b": f"h{i}", "label": "yes"}
                for i in range(40)]
        if lang == "en":
            rows[5] = {"text_a": "", "text_b": "h5", "label": "yes"}  # a bad key row
        (tmp_path / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = {"name": "g", "format": "jsonl", "path": str(tmp_path / "{lang}.jsonl"), "labels": ["no", "yes"],
              "parallel": True, "group_by": "text_a", "group_split": {"eval_fraction": 0.5}}
    for groups in ("train", "eval"):
        alone = read_classification_source(source(**common, languages=["sw"], groups=groups), bad_records="skip")
        whole = read_classification_source(source(**common, languages=["en", "sw"], groups=groups),
                                           bad_records="skip")
        assert [e.uid for e in alone.examples] == [e.uid for e in by_language(whole.examples)["sw"]]
        assert "g:5" not in {e.instance for e in alone.examples}
        kept = {int(e.instance.split(":")[1]) for e in alone.examples}
        assert all((i ^ 1) in kept for i in kept if i not in (4, 5))  # pairs stay together
    with pytest.raises(DataError, match=r"en\.jsonl:6: column 'text_a' \(text_a\) is empty"):
        read_classification_source(source(**common, languages=["sw"], groups="train"))


def build_split(fraction, seed):
    return GroupSplitConfig(eval_fraction=fraction, seed=seed)


def test_max_examples_keeps_the_same_instances_per_language(data_dir):
    cfg = source(name="p", format="pawsx", path="pawsx-dev", languages=["en", "ja"], max_examples=7, groups="train")
    langs = by_language(read_classification_source(cfg, root=str(data_dir)).examples)
    assert [e.instance for e in langs["en"]] == [e.instance for e in langs["ja"]] and len(langs["en"]) == 7


@pytest.fixture
def xnli_copy(tmp_path, data_dir):
    """en/fr/de XNLI dev files copied into a temporary directory (to damage them)."""
    for lang in ("en", "fr", "de"):
        shutil.copy(data_dir / "xnli-dev" / f"dev-{lang}.tsv", tmp_path / f"dev-{lang}.tsv")
    return tmp_path


def test_parallelism_check_names_the_shortened_file(xnli_copy):
    fr = xnli_copy / "dev-fr.tsv"
    fr.write_text("".join(fr.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    with pytest.raises(DataError, match=r"dev-fr\.tsv has 2489 rows.*dev-de\.tsv has 2490"):
        read_classification_source(source(name="x", format="xnli", path=str(xnli_copy)))


def test_parallel_ids_must_match(tmp_path):
    rows = [{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": i}
            for i in range(3)]
    (tmp_path / "val-en.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rows[1]["idx"] = 9
    (tmp_path / "val-et.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"val-et\.jsonl:2 has id '9' where .*val-en\.jsonl:2 has '1'"):
        read_classification_source(source(name="c", format="xcopa", path=str(tmp_path)))


def _damage(path, line, text):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("bad", "reason", "message"),
    [
        ("premise only\thypothesis", "missing_column", r"dev-de\.tsv:4: expected 3 tab-separated columns"),
        ("a premise\ta hypothesis\tmaybe", "unknown_label", r"dev-de\.tsv:4: unknown label 'maybe'"),
        ("a premise\t  \tneutral", "empty_text", r"dev-de\.tsv:4: column 'text_b' \(text_b\) is empty"),
    ],
)
def test_bad_rows_error_or_are_skipped_in_every_language(xnli_copy, bad, reason, message):
    _damage(xnli_copy / "dev-de.tsv", 4, bad)
    cfg = source(name="x", format="xnli", path=str(xnli_copy))
    with pytest.raises(DataError, match=message):
        read_classification_source(cfg)
    result = read_classification_source(cfg, bad_records="skip")
    assert result.skipped.counts == {reason: 1, "parallel_copy": 2}
    langs = by_language(result.examples)
    assert all(len(rows) == 2489 for rows in langs.values())
    assert "xnli:3" not in {e.instance for e in result.examples}  # row 4 (0-based 3) dropped everywhere
    assert any("dev-de.tsv:4" in m for m in result.skipped.messages)


def test_generic_jsonl_csv_tsv_with_named_columns(tmp_path):
    records = [{"sid": f"s{i}", "first": f"premise {i}", "second": f"claim {i}", "gold": ["no", "yes"][i % 2]}
               for i in range(5)]
    for lang in ("en", "sw"):
        (tmp_path / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    columns = {"text_a": "first", "text_b": "second", "label": "gold", "id": "sid"}
    cfg = source(name="g", format="jsonl", path=str(tmp_path / "{lang}.jsonl"), languages=["en", "sw"],
                 columns=columns, labels=["no", "yes"], parallel=True)
    result = read_classification_source(cfg)
    assert [e.label for e in result.examples[:5]] == [0, 1, 0, 1, 0]
    assert result.examples[2].instance == result.examples[7].instance == "g:s2"
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('first,second,gold\n"a, quoted",b,yes\nc,d,no\ne,f\n')
    cfg = source(name="c", format="csv", path=str(csv_path), language="en", columns=columns, labels=["no", "yes"])
    with pytest.raises(DataError, match=r"data\.csv:4: the row has a different number of columns"):
        read_classification_source(cfg)
    result = read_classification_source(cfg, bad_records="skip")
    assert [(e.text_a, e.label) for e in result.examples] == [("a, quoted", 1), ("c", 0)]
    tsv_path = tmp_path / "data.tsv"
    tsv_path.write_text("text_a\ttext_b\tlabel\nx\ty\tno\n")
    cfg = source(name="t", format="tsv", path=str(tsv_path), language="de", labels=["no", "yes"])
    assert read_classification_source(cfg).examples[0].label == 0


def test_hf_save_to_disk_directory(tmp_path):
    import datasets

    for lang in ("en", "fr"):
        ds = datasets.Dataset.from_dict({
            "premise": [f"{lang} p{i}" for i in range(4)], "hypothesis": [f"{lang} h{i}" for i in range(4)],
            "label": [0, 2, 1, 2],
        }, features=datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }))
        datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / lang))
    cfg = source(name="h", format="hf", path=str(tmp_path / "{lang}"), split="validation", languages=["en", "fr"],
                 columns={"text_a": "premise", "text_b": "hypothesis"},
                 labels=["entailment", "neutral", "contradiction"], parallel=True)
    result = read_classification_source(cfg)
    assert [(e.language, e.text_a, e.label) for e in result.examples[:2]] == [("en", "en p0", 0), ("en", "en p1", 2)]
    assert result.examples[4].instance == result.examples[0].instance == "h:0"
    with pytest.raises(DataError, match=r"splits \['validation'\]; set 'split'"):
        read_classification_source(source(name="h", format="hf", path=str(tmp_path / "en"), language="en",
                                          labels=["a", "b", "c"], split="train"))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.labels"):
        source(name="g", format="jsonl", path="x.jsonl", language="en")
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.columns\.txt"):
        source(name="g", format="jsonl", path="x.jsonl", language="en", labels=["a"], columns={"txt": "t"})
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.columns"):
        source(name="x", format="xnli", path="d", columns={"text_a": "t"})


def test_qa_and_classification_fields_do_not_mix():
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.groups.*classification formats"):
        source(name="x", format="xquad", path="d", groups="train")
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.pairs.*QA sources"):
        source(name="x", format="xnli", path="d", pairs="all")
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.articles.*split by group"):
        source(name="x", format="pawsx", path="d", articles="train")
