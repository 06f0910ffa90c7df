"""Shards and manifest: round trip, determinism, key safety, no pickle, bad input, and prepare() on real data."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from xdist.config import JobConfig, build
from xdist.data.shards import (
    MANIFEST_NAME,
    META_MEMBER,
    ArraySpec,
    ShardError,
    ShardMeta,
    decode_sample,
    iter_samples,
    load_manifest,
    raw_samples,
    sample_key,
    tokenizer_fingerprint,
    write_shards,
)
from xdist.tasks.qa.examples import QAFeature
from xdist.tasks.qa.features import qa_fields, shard_record

CELLS = (("en", "en"), ("en", "de"), ("de", "en"), ("sw", "sw"))
TRICKY_IDS = ("a.b", "a_b", "a/b", "日本語", "x_2e", "-1234", "")


def make_features(n_examples: int, length: int = 16, seed: int = 0, max_windows: int = 3) -> list[QAFeature]:
    """Random QA features: mixed cells and sources, 1..max_windows windows, uids with awkward characters."""
    rng = random.Random(seed)
    features = []
    for i in range(n_examples):
        q, c = CELLS[i % len(CELLS)]
        qid = f"{TRICKY_IDS[i % len(TRICKY_IDS)]}{i}"
        for window in range(rng.randint(1, max_windows)):
            start = rng.randrange(length)
            end = min(length - 1, start + rng.randrange(4))
            if rng.random() < 0.2:
                start = end = 0  # answer outside this window: CLS target
            real = rng.randint(length // 2, length)
            features.append(
                QAFeature(
                    example_uid=f"{qid}/{q}-{c}",
                    window=window,
                    input_ids=[rng.randrange(1, 119547) for _ in range(real)] + [0] * (length - real),
                    attention_mask=[1] * real + [0] * (length - real),
                    token_type_ids=[0] * (real // 2) + [1] * (length - real // 2),
                    offsets=[None] * length,
                    start_position=start,
                    end_position=end,
                    question_lang=q,
                    context_lang=c,
                    source=f"{('xquad', 'tydiqa')[i % 2]}:file{i % 2}.json",
                )
            )
    return features


def qa_records(features: list[QAFeature]):
    """QA features as shard records, lazily (as prepare hands them to write_shards)."""
    return (shard_record(feature) for feature in features)


def _by_key(features: list[QAFeature]) -> dict[str, QAFeature]:
    return {sample_key(f.example_uid, f.window): f for f in features}


def _shard_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


# --------------------------------------------------------------------------------------------------
# Writing and reading back
# --------------------------------------------------------------------------------------------------


def test_round_trip_restores_every_feature_and_counts(tmp_path):
    features = make_features(30)
    meta = ShardMeta(tokenizer_fingerprint="t" * 64, config_fingerprint="c" * 64, skipped={"total": 3})
    manifest = write_shards(qa_records(features), tmp_path, samples_per_shard=7, shuffle_seed=5, meta=meta)

    loaded = load_manifest(tmp_path, verify_checksums=True)
    assert loaded == manifest
    assert loaded.total_samples == len(features)
    assert [s.samples for s in loaded.shards] == [7] * (len(features) // 7) + (
        [len(features) % 7] if len(features) % 7 else []
    )
    assert loaded.groups == dict(Counter(f"{f.question_lang}-{f.context_lang}" for f in features))
    assert loaded.sources == dict(Counter(f.source.split(":")[0] for f in features))
    assert loaded.max_length == 16 and loaded.skipped == {"total": 3}
    assert loaded.tokenizer_fingerprint == "t" * 64

    expected = _by_key(features)
    seen = set()
    for shard in loaded.shards:
        samples = [decode_sample(raw, loaded.fields) for raw in raw_samples([str(loaded.shard_path(shard))])]
        assert len(samples) == shard.samples
        assert dict(Counter(s.group for s in samples)) == shard.groups
        for sample in samples:
            feature, arrays = expected[sample.key], sample.arrays
            assert sample.example_uid == feature.example_uid and sample.part == feature.window
            assert arrays["input_ids"].dtype == np.int32 and arrays["attention_mask"].dtype == np.uint8
            assert arrays["input_ids"].tolist() == feature.input_ids
            assert arrays["attention_mask"].tolist() == feature.attention_mask
            assert arrays["token_type_ids"].tolist() == feature.token_type_ids
            assert (arrays["start_positions"], arrays["end_positions"]) == (
                feature.start_position, feature.end_position)
            assert (sample.meta["question_lang"], sample.meta["context_lang"], sample.source) == (
                feature.question_lang, feature.context_lang, feature.source,
            )
            seen.add(sample.key)
    assert seen == set(expected)

    # No pickle anywhere: exactly the plain members per sample (one .npy per field + meta), none a .pyd/.pth/.pkl.
    suffixes = Counter()
    for shard in loaded.shards:
        for name in _shard_members(loaded.shard_path(shard)):
            key, _, suffix = name.partition(".")
            assert "/" not in key
            suffixes[suffix] += 1
    assert loaded.fields == qa_fields(16)
    assert set(suffixes) == {f"{name}.npy" for name in loaded.fields} | {META_MEMBER}
    assert all(count == len(features) for count in suffixes.values())


def test_write_shuffles_deterministically_and_mixes_cells(tmp_path):
    features = sorted(make_features(40), key=lambda f: (f.question_lang, f.context_lang))
    a = write_shards(qa_records(features), tmp_path / "a", 10, shuffle_seed=1)
    b = write_shards(qa_records(features), tmp_path / "b", 10, shuffle_seed=1)
    c = write_shards(qa_records(features), tmp_path / "c", 10, shuffle_seed=2)
    # Same input and seed: byte-identical shards (fixed mtime), so sha256 matches.
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert [s.sha256 for s in a.shards] != [s.sha256 for s in c.shards]
    # The input was sorted by cell; after the shuffle every full shard holds several cells.
    assert all(len(s.groups) >= 2 for s in a.shards if s.samples == 10)
    keys_a = [s.key for s in iter_samples(a)]
    assert keys_a != [sample_key(f.example_uid, f.window) for f in features]
    assert sorted(keys_a) == sorted(s.key for s in iter_samples(c))


def test_sample_keys_are_safe_stable_and_injective():
    uids = [f"{i}/en-en" for i in TRICKY_IDS] + ["a/b_en-en", "a_2fb/en-en", "a_5fb/en-en", "x" * 300, "x" * 301]
    assert len(set(uids)) == len(uids)
    keys = [sample_key(uid, w) for uid in uids for w in (0, 1, 12)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert "." not in key and "/" not in key and len(key) < 140
    assert sample_key("56be/en-de", 0) == "56be_2fen-de-w0"  # readable and stable across runs


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda fs: fs[3].input_ids.append(7), "input_ids, attention_mask and token_type_ids have [17, 16, 16] tokens"),
        (lambda fs: setattr(fs[2], "end_position", 16), "end_position=16 is outside [0, 16)"),
        (lambda fs: setattr(fs[2], "start_position", fs[2].end_position + 1), "start_position"),
        (lambda fs: fs.append(fs[0]), "duplicate (example, part)"),
        (lambda fs: fs[1].attention_mask.__setitem__(0, 300), "attention_mask values must lie in [0, 255]"),
        (lambda fs: setattr(fs[4], "question_lang", ""), "question_lang and context_lang must be set"),
        (lambda fs: fs.clear(), "no features to write"),
    ],
)
def test_write_rejects_bad_features(tmp_path, mutate, message):
    features = make_features(5, max_windows=1)
    mutate(features)
    with pytest.raises(ShardError) as err:
        write_shards(qa_records(features), tmp_path, 4, shuffle_seed=0)
    assert message in str(err.value)
    if features:
        assert "example" in str(err.value)  # names the offending feature
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_write_refuses_a_directory_with_shards(tmp_path):
    write_shards(qa_records(make_features(4)), tmp_path, 4, shuffle_seed=0)
    with pytest.raises(ShardError, match="already holds manifest.json .*overwrite=True"):
        write_shards(qa_records(make_features(4)), tmp_path, 4, shuffle_seed=0)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match="already holds train-000000.tar"):
        write_shards(qa_records(make_features(4)), tmp_path, 4, shuffle_seed=0)


# --------------------------------------------------------------------------------------------------
# Loading: bad input gets a clear error
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def shard_dir(tmp_path) -> Path:
    write_shards(qa_records(make_features(12)), tmp_path, 8, shuffle_seed=0)
    return tmp_path


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(ShardError, match=r"manifest\.json: no shard manifest here; run `xdist prepare`"):
        load_manifest(tmp_path)


def test_shards_without_manifest_hint_at_an_interrupted_prepare(shard_dir):
    (shard_dir / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match="interrupted prepare"):
        load_manifest(shard_dir)


def test_corrupt_manifest_json_names_file_and_line(shard_dir):
    path = shard_dir / MANIFEST_NAME
    lines = path.read_text().splitlines()
    lines[4] = lines[4] + ","  # a trailing comma inside the object
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardError) as err:
        load_manifest(shard_dir)
    text = str(err.value)
    assert f"{path}:" in text and "invalid JSON" in text
    line = int(text.split(f"{path}:")[1].split(":")[0])
    assert line in (5, 6)  # the error is at the comma's line or the next one


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99),
         "shard format version 99, this xdist reads version 2; re-run `xdist prepare`"),
        (lambda m: m.update(max_length="16"), "field 'max_length' should be int"),
        (lambda m: m.pop("shards"), "missing field 'shards'"),
        (lambda m: m.update(total_samples=m["total_samples"] + 1), "total_samples is"),
        (lambda m: m["shards"][0].update(samples=0), "has 0 samples, expected at least 1"),
        (lambda m: m["shards"][1].update(name="../evil.tar"), "is not of the form train-NNNNNN.tar"),
        (lambda m: m["shards"][0]["groups"].clear(), "do not add up"),
    ],
)
def test_malformed_manifest_fields_are_named(shard_dir, edit, message):
    path = shard_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ShardError) as err:
        load_manifest(shard_dir)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_truncated_or_corrupt_shard(shard_dir):
    shard = shard_dir / "train-000001.tar"
    content = shard.read_bytes()
    shard.unlink()
    with pytest.raises(ShardError, match="lists shard train-000001.tar, but .* does not exist"):
        load_manifest(shard_dir)
    shard.write_bytes(content[:-512])
    with pytest.raises(ShardError, match="the shard was changed or truncated"):
        load_manifest(shard_dir)
    flipped = bytearray(content)
    flipped[700] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    load_manifest(shard_dir)  # same size: only the checksum can tell
    with pytest.raises(ShardError, match="sha256 differs"):
        load_manifest(shard_dir, verify_checksums=True)


def _tokenizer_dir(path: Path, vocab: list[str]) -> Path:
    path.mkdir()
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return path


def test_tokenizer_fingerprint_mismatch(tmp_path, monkeypatch):
    tok_a = _tokenizer_dir(tmp_path / "tok_a", ["[PAD]", "a"])
    tok_b = _tokenizer_dir(tmp_path / "tok_b", ["[PAD]", "b"])
    fingerprint = tokenizer_fingerprint(tok_a)
    assert fingerprint != tokenizer_fingerprint(tok_b)
    # The path is resolved as load_tokenizer resolves it (a code-built config keeps ${VAR} unexpanded).
    monkeypatch.setenv("TOKENIZERS_HERE", str(tmp_path))
    assert tokenizer_fingerprint("${TOKENIZERS_HERE}/tok_a") == fingerprint
    (tok_a / "vocab.txt").write_text("unrelated\n")  # not one of the fingerprinted files
    assert tokenizer_fingerprint(tok_a) == fingerprint
    (tok_a / "special_tokens_map.json").write_text("{}")
    assert tokenizer_fingerprint(tok_a) != fingerprint

    shards = tmp_path / "shards"
    write_shards(qa_records(make_features(4)), shards, 4, shuffle_seed=0, meta=ShardMeta(tokenizer_fingerprint(tok_a)))
    load_manifest(shards, tokenizer=tok_a)
    with pytest.raises(ShardError, match="re-run `xdist prepare` with this tokenizer"):
        load_manifest(shards, tokenizer=tok_b)
    with pytest.raises(ShardError, match="has no tokenizer.json"):
        tokenizer_fingerprint(tmp_path / "shards")


def test_decoder_refuses_pickled_or_unexpected_members(tmp_path):
    good = {
        "__key__": "k-w0",
        "input_ids.npy": _npy(np.arange(4, dtype=np.int32)),
        "attention_mask.npy": _npy(np.ones(4, np.uint8)),
        "token_type_ids.npy": _npy(np.zeros(4, np.uint8)),
        "meta.json": json.dumps({"example_uid": "k", "part": 0, "group": "en-en", "question_lang": "en",
                                 "context_lang": "en", "source": "s"}).encode(),
    }
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    bad_npy = {**good, "__key__": "bad-w0", "input_ids.npy": pickled.getvalue()}
    extra_member = {**good, "__key__": "extra-w0", "payload.pyd": b"\x80\x04K\x01."}
    truncated = {**good, "__key__": "cut-w0", "token_type_ids.npy": good["token_type_ids.npy"][:-1]}
    path = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in (good, bad_npy, extra_member, truncated):
            writer.write(sample)
    raws = list(raw_samples([str(path)]))
    def fields(length: int) -> dict[str, ArraySpec]:
        return {"input_ids": ArraySpec("int32", (length,)), "attention_mask": ArraySpec("uint8", (length,)),
                "token_type_ids": ArraySpec("uint8", (length,))}

    assert decode_sample(raws[0], fields(4)).arrays["input_ids"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ShardError, match="input_ids.npy is not a plain .npy array"):
        decode_sample(raws[1], fields(4))
    with pytest.raises(ShardError, match=r"members .*payload\.pyd"):
        decode_sample(raws[2], fields(4))
    with pytest.raises(ShardError, match=r"token_type_ids.npy is not a plain .npy array: payload of 3 bytes"):
        decode_sample(raws[3], fields(4))
    with pytest.raises(ShardError, match=r"has shape \(4,\), expected \(8,\)"):
        decode_sample(raws[0], fields(8))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# prepare() on real data
# --------------------------------------------------------------------------------------------------


def _job(data_dir: Path, tokenizer_path: Path, shards: Path, extra_sources: list | None = None) -> JobConfig:
    raw = {
        "data": {
            "root": str(data_dir),
            "shards": str(shards),
            "samples_per_shard": 16,
            "bad_records": "skip",
            "train": [
                {"name": "tydiqa-en", "format": "tydiqa", "path": "tydiqa-goldp/tydiqa.goldp.en.train.json",
                 "max_examples": 12},
                {"name": "xquad", "format": "xquad", "path": "xquad", "languages": ["en", "de"], "pairs": "all",
                 "articles": "train", "max_examples": 5},
                *(extra_sources or []),
            ],
        },
        "features": {"tokenizer": str(tokenizer_path), "max_length": 64, "doc_stride": 24, "max_query_length": 24},
    }
    return build(JobConfig, raw)


def test_prepare_real_subset_round_trips_and_is_idempotent(tmp_path, data_dir, tokenizer_path, mbert_tokenizer):
    from xdist.data.prepare import prepare, shards_config
    from xdist.data.shards import json_fingerprint
    from xdist.tasks.qa.features import featurize
    from xdist.tasks.qa.readers import read_source

    # A SQuAD file with one good record and one whose answer offset is wrong: skipped and reported.
    squad = tmp_path / "tiny.json"
    context = "Nairobi is the capital of Kenya."
    qas = [
        {"id": "good", "question": "Capital of Kenya?", "answers": [{"text": "Nairobi", "answer_start": 0}]},
        {"id": "bad", "question": "Which country?", "answers": [{"text": "Kenya", "answer_start": 3}]},
    ]
    squad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))
    extra = [{"name": "tiny", "format": "squad", "path": str(squad), "language": "en"}]
    cfg = _job(data_dir, tokenizer_path, tmp_path / "shards", extra)
    manifest = prepare(cfg, progress=False)

    expected = []
    for source in cfg.data.train:
        expected += featurize(read_source(source, cfg.data).examples, mbert_tokenizer, cfg.features).features
    assert manifest.total_samples == len(expected)
    assert manifest.sources == dict(Counter(f.source.split(":")[0] for f in expected))
    assert set(manifest.groups) == {"en-en", "en-de", "de-en", "de-de"}
    assert manifest.groups == dict(Counter(f"{f.question_lang}-{f.context_lang}" for f in expected))
    assert manifest.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer_path)
    assert manifest.config_fingerprint == json_fingerprint(shards_config(cfg))
    assert manifest.skipped["total"]["total"] == 1
    assert manifest.skipped["per_source"]["tiny"]["total"] == 1
    assert manifest.feature_stats["total"]["features"] == len(expected)
    assert manifest.max_length == 64
    by_key = _by_key(expected)
    for sample in iter_samples(load_manifest(cfg.data.shards, tokenizer=tokenizer_path)):
        feature = by_key.pop(sample.key)
        assert sample.arrays["input_ids"].tolist() == feature.input_ids
        assert (sample.arrays["start_positions"], sample.arrays["end_positions"]) == (
            feature.start_position, feature.end_position)
    assert not by_key

    # Same config: up to date, nothing rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in Path(cfg.data.shards).iterdir()}
    assert prepare(cfg, progress=False) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in Path(cfg.data.shards).iterdir()} == before

    # A different config is refused, naming what changed, unless overwrite.
    cfg.data.samples_per_shard = 9
    with pytest.raises(ShardError, match=r"data\.samples_per_shard: 16 -> 9.*overwrite=True"):
        prepare(cfg, progress=False)
    rebuilt = prepare(cfg, overwrite=True, progress=False)
    assert {s.samples for s in rebuilt.shards[:-1]} == {9}
    assert rebuilt.total_samples == manifest.total_samples
    assert sorted(Path(cfg.data.shards).glob("train-*.tar")) == [
        Path(cfg.data.shards) / s.name for s in rebuilt.shards
    ]

    # Shards without a manifest (an interrupted run) are refused too.
    (Path(cfg.data.shards) / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match="interrupted prepare"):
        prepare(cfg, progress=False)


def test_shard_bytes_hash_is_recorded(tmp_path):
    manifest = write_shards(qa_records(make_features(6)), tmp_path, 5, shuffle_seed=0)
    for shard in manifest.shards:
        data = (tmp_path / shard.name).read_bytes()
        assert shard.bytes == len(data) and shard.sha256 == hashlib.sha256(data).hexdigest()
