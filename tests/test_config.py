"""Config loading: strict types, unknown keys, env expansion, overrides, errors that name the field."""

from pathlib import Path

import pytest

from xdist.config import ConfigError, JobConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "configs").rglob("*.yaml"))
    assert recipes, "configs/ holds no YAML recipe"
    for recipe in recipes:
        assert isinstance(load_config(recipe), JobConfig), recipe


def test_values_are_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 3e-5\n  micro_batch_size: 4\neval:\n  sets:\n"
                                      "    - {name: x, format: xquad, path: xquad, pairs: all}\n"))
    assert cfg.train.lr == pytest.approx(3e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.micro_batch_size == 4
    assert cfg.eval.sets[0].pairs == "all" and cfg.eval.sets[0].format == "xquad"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("train:\n  learning_rate: 1e-3\n", "train.learning_rate", "unknown key"),
        ("trian:\n  lr: 1e-3\n", "trian", "unknown key"),
        ("train:\n  micro_batch_size: four\n", "train.micro_batch_size", "expected an integer"),
        ("train:\n  micro_batch_size: 2.5\n", "train.micro_batch_size", "expected an integer"),
        ("train:\n  lr: fast\n", "train.lr", "expected a number"),
        ("train:\n  export: maybe\n", "train.export", "expected true or false"),
        ("train:\n  precision: fp8\n", "train.precision", "expected one of"),
        ("train:\n  epochs: 0\n", "train.epochs", "positive"),
        ("eval:\n  sets:\n    - {name: x, path: p, max_examples: -1}\n", "eval.sets[0].max_examples", "positive"),
        ("eval:\n  sets:\n    - {name: x, path: p, colour: red}\n", "eval.sets[0].colour", "unknown key"),
        ("eval:\n  sets:\n    - {name: x}\n", "eval.sets[0].path", "expected a file"),
        ("eval:\n  sets:\n    - {path: p}\n", "eval.sets[0].name", "required"),
        ("eval:\n  sets:\n    - {name: x, path: p, pairs: 'en_de'}\n", "eval.sets[0].pairs", "q-c"),
        ("features:\n  doc_stride: 400\n", "features.doc_stride", "must be <"),
        ("model:\n  architecture: [1, 2]\n", "model.architecture", "expected a mapping"),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, field, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert f"'{field}'" in str(err.value) and expected in str(err.value)


def test_env_expansion_with_and_without_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDIST_TEST_ROOT", "/data/here")
    monkeypatch.delenv("XDIST_TEST_UNSET", raising=False)
    cfg = load_config(write(tmp_path, "data:\n  root: ${XDIST_TEST_ROOT}/qa\n"
                                      "  shards: ${XDIST_TEST_UNSET:-/tmp/shards}\n"))
    assert cfg.data.root == "/data/here/qa"
    assert cfg.data.shards == "/tmp/shards"
    with pytest.raises(ConfigError, match=r"data.root.*XDIST_TEST_UNSET"):
        load_config(write(tmp_path, "data:\n  root: ${XDIST_TEST_UNSET}\n"))


def test_defaults_are_expanded_too(monkeypatch):
    monkeypatch.setenv("XDIST_DATA", "/somewhere")
    monkeypatch.setenv("XDIST_TOKENIZER", "/tok")
    cfg = load_config(None)
    assert cfg.data.root == "/somewhere"
    assert cfg.features.tokenizer == "/tok"
    monkeypatch.delenv("XDIST_DATA")
    monkeypatch.delenv("XDIST_TOKENIZER")
    cfg = load_config(None)
    assert cfg.data.root == "~/.cache/xdist/data" and cfg.features.tokenizer == "bert-base-multilingual-cased"


def test_overrides(tmp_path):
    path = write(tmp_path, "eval:\n  sets:\n    - {name: x, path: p}\n    - {name: y, path: q}\n")
    cfg = load_config(path, ["train.lr=2e-4", "train.max_steps=7", "eval.sets.1.max_examples=5",
                             "model.architecture={hidden_size: 32}", "train.eval_every=null"])
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.train.max_steps == 7 and cfg.train.eval_every is None
    assert cfg.eval.sets[1].max_examples == 5 and cfg.eval.sets[0].max_examples is None
    assert cfg.model.architecture == {"hidden_size": 32}
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="must index the list"):
        load_config(path, ["eval.sets.7.name=z"])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"(?s)job.yaml.*not valid YAML.*line"):
        load_config(bad)


def test_extends_merges_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train:\n  lr: 1e-3\n  epochs: 3\nmodel:\n  architecture: {hidden_size: 64, num_hidden_layers: 2}\n"
        "eval:\n  sets:\n    - {name: a, path: p}\n    - {name: b, path: q}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\ntrain:\n  lr: 5e-5\nmodel:\n  architecture: {num_hidden_layers: 4}\n"
        "eval:\n  sets:\n    - {name: c, path: r}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.lr == pytest.approx(5e-5) and cfg.train.epochs == 3  # section merged, key replaced
    assert cfg.model.architecture == {"hidden_size": 64, "num_hidden_layers": 4}  # mappings merge deeply
    assert [s.name for s in cfg.eval.sets] == ["c"]  # lists are replaced, not appended
    (tmp_path / "overlay.yaml").write_text("train:\n  epochs: 9\n  seed: 7\n")
    (tmp_path / "multi.yaml").write_text("extends: [base.yaml, overlay.yaml]\ntrain:\n  seed: 1\n")
    multi = load_config(tmp_path / "multi.yaml")
    assert (multi.train.lr, multi.train.epochs, multi.train.seed) == (pytest.approx(1e-3), 9, 1)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*does not exist"):
        load_config(tmp_path / "orphan.yaml")


def test_teacher_partition_is_checked(tmp_path):
    cfg = load_config(write(tmp_path, "method:\n  name: skd\n  teacher_partition: zero3\n"))
    assert cfg.method.teacher_partition == "zero3"
    assert load_config(write(tmp_path, "method:\n  name: skd\n")).method.teacher_partition == "replicated"
    with pytest.raises(ConfigError, match=r"'method\.teacher_partition'.*'zero3'.*'ce'"):
        load_config(write(tmp_path, "method:\n  name: ce\n  teacher_partition: zero3\n"))
    with pytest.raises(ConfigError, match=r"'method\.teacher_partition'.*\['replicated', 'zero3'\]"):
        load_config(write(tmp_path, "method:\n  name: skd\n  teacher_partition: zero2\n"))
