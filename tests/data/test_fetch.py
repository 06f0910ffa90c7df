"""``xdist data fetch`` against a local HTTP mirror (``XDIST_DATA_MIRROR``) serving small archives built here.

The registry entries are the real ones (URLs, unpackers); only the bytes differ, so pinned checksums are
replaced by those of the test files where a test needs them to match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.cli_helpers import ENV, REPO
from xdist.config import DataConfig, SourceConfig
from xdist.data.fetch import REGISTRY, FetchError, fetch
from xdist.errors import OfflineError
from xdist.tasks.qa.readers import read_source


class Mirror:
    """A tiny HTTP server on 127.0.0.1 with Range support; can cut one response short to simulate a dropped link."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if self.path in mirror.cut_once:  # promise everything, send a third, hang up
                    mirror.cut_once.discard(self.path)
                    self.wfile.write(body[start : start + len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def serve(self, official_url: str, body: bytes) -> str:
        """Serve ``body`` where the mirror layout puts ``official_url``; returns the mirror path."""
        parsed = urlparse(official_url)
        path = f"/{parsed.netloc}{parsed.path}"
        self.files[path] = body
        return path


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    server = Mirror()
    monkeypatch.setenv("XDIST_DATA_MIRROR", server.url)
    monkeypatch.setenv("XDIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XDIST_OFFLINE", raising=False)
    yield server
    server.server.shutdown()


def squad_json(language: str, ids: list[str], title: str = "Article") -> bytes:
    """A valid SQuAD v1.1 file: one paragraph per id, each answer at its true offset."""
    paragraphs = []
    for qid in ids:
        context = f"{language} context of {qid}: the answer is forty two."
        paragraphs.append({"context": context, "qas": [{
            "id": qid, "question": f"{language} question {qid}?",
            "answers": [{"text": "forty two", "answer_start": context.index("forty two")}]}]})
    return json.dumps({"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}).encode()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def tgz_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def serve_xquad(mirror: Mirror) -> dict[str, str]:
    """Serve 12 small parallel XQuAD files; returns {url: sha256} of what is served."""
    hashes = {}
    for item in REGISTRY["xquad"].downloads:
        language = item.name.split(".")[1]
        body = squad_json(language, ["q1", "q2", "q3"])
        mirror.serve(item.url, body)
        hashes[item.url] = hashlib.sha256(body).hexdigest()
    return hashes


def pinned_to(dataset, hashes: dict[str, str]):
    """The registry entry with its pins replaced by the test files' hashes."""
    downloads = tuple(dataclasses.replace(d, sha256=hashes[d.url]) for d in dataset.downloads)
    return dataclasses.replace(dataset, downloads=downloads)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def read(root: Path, **source) -> list:
    data = DataConfig(root=str(root), train=[], shards=str(root / "shards"))
    return read_source(SourceConfig(**source), data).examples


def test_fetch_writes_the_layout_the_recipes_read(mirror, tmp_path):
    root = tmp_path / "data"
    registry = {"xquad": pinned_to(REGISTRY["xquad"], serve_xquad(mirror)),
                "tydiqa": REGISTRY["tydiqa"], "mlqa": REGISTRY["mlqa"]}
    train_url, dev_url = (d.url for d in REGISTRY["tydiqa"].downloads)
    tydi = json.loads(squad_json("en", ["english-1", "english-2"]))
    tydi["data"] += json.loads(squad_json("sw", ["swahili-7"]))["data"]
    mirror.serve(train_url, json.dumps(tydi).encode())
    mirror.serve(dev_url, tgz_bytes({"tydiqa-goldp-v1.1-dev/tydiqa-goldp-dev-english.json":
                                     squad_json("en", ["english-9"])}))
    mirror.serve(REGISTRY["mlqa"].downloads[0].url, zip_bytes({
        "MLQA_V1/dev/dev-context-de-question-en.json": squad_json("de", ["m1"]),
        "MLQA_V1/test/test-context-de-question-en.json": squad_json("de", ["m1", "m2"]),
        "MLQA_V1/test/test-context-en-question-en.json": squad_json("en", ["m1", "m2"])}))

    for name in registry:
        fetch(name, root, registry=registry, progress=False)

    # The sources exactly as the recipes (configs/*.yaml) and the README describe them.
    xquad = read(root, name="xquad", format="xquad", path="xquad", languages=["en", "de", "zh"], pairs="all")
    assert len(xquad) == 9 * 3 and {e.cell for e in xquad} == {(q, c) for q in ("en", "de", "zh")
                                                                for c in ("en", "de", "zh")}
    tydi_en = read(root, name="t", format="tydiqa", path="tydiqa-goldp/tydiqa.goldp.en.train.json")
    assert [e.id for e in tydi_en] == ["english-1", "english-2"] and tydi_en[0].cell == ("en", "en")
    assert [e.id for e in read(root, name="t", format="tydiqa", path="tydiqa-goldp/tydiqa.goldp.sw.train.json")] \
        == ["swahili-7"]
    assert (root / "tydiqa-goldp" / "tydiqa.goldp.en.dev.json").is_file()
    mlqa = read(root, name="m", format="mlqa", path="mlqa/test")
    assert sorted({e.cell for e in mlqa}) == [("en", "de"), ("en", "en")] and len(mlqa) == 4
    assert leftovers(root / ".downloads") == [] and not list(root.glob(".*partial*"))

    # The unverifiable sources were pinned on this first fetch; bytes that change later are refused.
    pins = json.loads((tmp_path / "cache" / "pins.json").read_text())
    assert set(pins) == {train_url, dev_url, REGISTRY["mlqa"].downloads[0].url}
    mirror.serve(REGISTRY["mlqa"].downloads[0].url, zip_bytes({"MLQA_V1/test/x.json": b"{}"}))
    (root / "mlqa").rename(root / "mlqa-old")
    with pytest.raises(FetchError, match="checksum mismatch.*recorded on the first fetch"):
        fetch("mlqa", root, registry=registry, progress=False)
    assert not (root / "mlqa").exists()


def test_checksum_mismatch_is_refused_and_leaves_nothing(mirror, tmp_path):
    """The real XQuAD pins against other bytes: refused, and no file or directory is left behind."""
    serve_xquad(mirror)
    root = tmp_path / "data"
    with pytest.raises(FetchError, match=r"checksum mismatch .*xquad\.ar\.json.*pinned in xdist/data/fetch\.py"):
        fetch("xquad", root, progress=False)
    assert leftovers(root) == []


def test_interrupted_download_resumes_with_a_range_request(mirror, tmp_path):
    hashes = serve_xquad(mirror)
    registry = {"xquad": pinned_to(REGISTRY["xquad"], hashes)}
    url = REGISTRY["xquad"].downloads[4].url  # xquad.es.json
    path = urlparse(url).path
    served = mirror.files[f"/{urlparse(url).netloc}{path}"]
    mirror.cut_once.add(f"/{urlparse(url).netloc}{path}")
    root = tmp_path / "data"
    with pytest.raises(FetchError, match="interrupted after .* run the same command again to resume"):
        fetch("xquad", root, registry=registry, progress=False)
    partial = root / ".downloads" / "xquad" / "xquad.es.json.part"
    assert partial.stat().st_size == len(served) // 3
    assert not (root / "xquad").exists(), "an interrupted fetch must not leave a directory that looks complete"

    fetch("xquad", root, registry=registry, progress=False)
    ranges = [r for p, r in mirror.requests if p.endswith("xquad.es.json")]
    assert ranges == [None, f"bytes={len(served) // 3}-"]
    assert (root / "xquad" / "xquad.es.json").read_bytes() == served
    assert len(list((root / "xquad").glob("xquad.*.json"))) == 12
    assert leftovers(root / ".downloads") == []


def test_offline_refuses_and_present_sets_are_left_alone(mirror, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with pytest.raises(OfflineError, match="offline mode forbids downloading"):
        fetch("xquad", root, offline=True)
    monkeypatch.setenv("XDIST_OFFLINE", "1")
    with pytest.raises(OfflineError):
        fetch("xquad", root)
    assert mirror.requests == []
    (root / "xquad").mkdir(parents=True)
    assert fetch("xquad", root) == [root / "xquad"]  # present: nothing to download, offline or not
    assert mirror.requests == []


def test_cli_offline_refusal_is_one_paragraph(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xdist.cli", "data", "fetch", "xquad", "tydiqa", "--offline",
                             "--dir", str(tmp_path / "d")], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdist data: error: data set 'xquad' is not in"), result.stderr
    assert "--offline" in lines[0] and "XDIST_DATA" in lines[0]


def test_classification_sets_unpack_to_the_readers_layout(mirror, tmp_path):
    """XNLI, PAWS-X and XCOPA: the publishers' archives become the per-language files the recipes read."""
    header = ["language", "gold_label", "sentence1", "sentence2", "pairID"]
    xnli = {split: "\t".join(header) + "\n" + "".join(
        f"{lang}\t{label}\t{lang} premise {i}\t{lang} hypothesis {i}\t{i}\n"
        for i, label in enumerate(["neutral", "entailment"]) for lang in ("en", "de")) for split in ("dev", "test")}
    mirror.serve(REGISTRY["xnli"].downloads[0].url, zip_bytes(
        {f"XNLI-1.0/xnli.{split}.tsv": text.encode() for split, text in xnli.items()}))
    mirror.serve(REGISTRY["pawsx"].downloads[0].url, tgz_bytes({
        f"x-final/{lang}/dev_2k.tsv": f"id\tsentence1\tsentence2\tlabel\n1\t{lang} a\t{lang} b\t1\n".encode()
        for lang in ("en", "ja")}))
    copa = {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": 0}
    xcopa_url, copa_url = (d.url for d in REGISTRY["xcopa"].downloads)
    mirror.serve(xcopa_url, zip_bytes({"xcopa-master/data/et/val.et.jsonl": json.dumps(copa).encode(),
                                       "xcopa-master/data-gmt/et/val.et.jsonl": b"not this one",
                                       "xcopa-master/LICENSE": b"CC BY 4.0"}))
    mirror.serve(copa_url, zip_bytes({"COPA/train.jsonl": json.dumps(copa).encode()}))
    root = tmp_path / "data"
    for name in ("xnli", "pawsx", "xcopa"):
        fetch(name, root, progress=False)

    assert (root / "xnli-dev" / "dev-de.tsv").read_text() == "de premise 0\tde hypothesis 0\tneutral\n" \
        "de premise 1\tde hypothesis 1\tentailment\n"
    unlabelled = (root / "xnli-test-unlabelled" / "test-en.tsv").read_text()
    assert unlabelled.splitlines()[0] == "en premise 0\ten hypothesis 0"
    assert (root / "pawsx-dev" / "dev-ja.tsv").read_text() == "ja a\tja b\t1\n"
    assert json.loads((root / "xcopa" / "val-et.jsonl").read_text()) == copa
    assert json.loads((root / "xcopa" / "train-en.jsonl").read_text()) == copa
    assert (root / "xcopa" / "LICENSE.md").read_text() == "CC BY 4.0"
