"""``xdist data fetch``: the public data sets xdist reads, from where they are published, into the layout recipes read.

Each :class:`DataSet` names its official download URLs, the sha256 of each file, and how the download
becomes the directories the recipes point at (``xquad/xquad.<lang>.json``, ``tydiqa-goldp/
tydiqa.goldp.<lang>.train.json``, ...). Fetching one set:

1. **download** each file (:func:`download`) into ``<dir>/.downloads/``, resumable (HTTP ``Range``: an
   interrupted download continues from its ``.part`` file), with a progress bar;
2. **verify** its sha256 against the pin; a mismatch deletes the file and stops;
3. **unpack** into a staging directory ``<dir>/.<name>.partial-*``, then **rename** each finished
   directory into place (``os.replace``, atomic on one file system): a fetch cut off anywhere leaves no
   directory that looks complete, and the next run starts that step again.

Pins. Where the official bytes could be checked when this code was written, the sha256 is written here
(:attr:`Download.sha256`). For the others it is ``None``, and the pin is **recorded on the first
successful fetch** (trust on first use) in ``$XDIST_CACHE/pins.json`` (default ``~/.cache/xdist``) and
checked on every later fetch of that URL, through any mirror.

``XDIST_DATA_MIRROR=<base URL>`` fetches every file from ``<base>/<host>/<path of the official URL>``
instead (the tree ``wget -x`` builds), for air-gapped sites and tests. ``--offline`` (or
``XDIST_OFFLINE=1``) refuses to download anything. The default directory is :func:`default_data_dir`.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from xdist.errors import ConfigValueError, OfflineError, UserError

log = logging.getLogger("xdist.data")

MIRROR_ENV = "XDIST_DATA_MIRROR"
OFFLINE_ENV = "XDIST_OFFLINE"
CHUNK = 1 << 16


class FetchError(UserError, OSError):
    """A download failed, was refused (checksum) or could not be unpacked; the message says what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------
# Where data lives
# --------------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$XDIST_DATA`` if set, else ``~/.cache/xdist/data``: where fetched sets go and recipes read from."""
    value = os.environ.get("XDIST_DATA")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "xdist" / "data"


def pins_file() -> Path:
    """Trust-on-first-use sha256 pins: ``$XDIST_CACHE/pins.json`` (default ``~/.cache/xdist/pins.json``)."""
    base = os.environ.get("XDIST_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "xdist") / "pins.json"


def offline_requested() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def mirrored(url: str) -> str:
    """``url`` itself, or its copy under ``$XDIST_DATA_MIRROR`` (``<mirror>/<host>/<path>``)."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return url
    parsed = urllib.parse.urlparse(url)
    return f"{base.rstrip('/')}/{parsed.netloc}{parsed.path}"


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """One file of a data set as its publisher distributes it."""

    url: str
    """Official download URL (the mirror keeps its host and path)."""

    sha256: str | None
    """Expected sha256 of the file; ``None`` means pinned on first successful fetch (see module doc)."""

    @property
    def name(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


Unpacker = Callable[[list[Path], Path], None]
"""``unpack(downloaded_files, staging_dir)``: writes each of the set's target directories under ``staging_dir``."""


@dataclass(frozen=True)
class DataSet:
    """A public data set (or tokenizer) xdist knows how to fetch."""

    name: str
    """What ``xdist data fetch NAME`` calls it."""

    targets: tuple[str, ...]
    """Directories (relative to the data directory) it creates: the paths the recipes read."""

    downloads: tuple[Download, ...]
    unpack: Unpacker
    summary: str
    """One line for ``xdist data list``: what it is and its licence."""


# --- unpackers: official distribution -> the layout of the readers (xdist/tasks/qa/readers.py) --------


def _copy_into(target: str) -> Unpacker:
    def unpack(files: list[Path], staging: Path) -> None:
        (staging / target).mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, staging / target / path.name)

    return unpack


def _extract(path: Path, where: Path) -> None:
    """Unpack a zip or tar archive into ``where``; members that would land outside it are refused
    (tarfile's ``data`` filter; zipfile drops ``..`` and absolute parts itself)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(where)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(where, filter="data")
    except tarfile.FilterError as err:
        raise FetchError(f"{str(path)!r}: archive member refused ({err}); the file is not what the publisher "
                         "distributes. Delete it and fetch again") from None


def _find_dir(root: Path, name: str) -> Path:
    """The one directory called ``name`` inside an unpacked archive (publishers nest differently)."""
    found = sorted(p for p in root.rglob(name) if p.is_dir())
    if not found:
        raise FetchError(f"the downloaded archive has no directory {name!r}; the publisher changed its layout")
    return found[0]


def _unpack_mlqa(files: list[Path], staging: Path) -> None:
    """``MLQA_V1.zip`` → ``mlqa/dev`` and ``mlqa/test`` (MLQA's own file names, read by ``format: mlqa``)."""
    _extract(files[0], staging / "raw")
    (staging / "mlqa").mkdir()
    for split in ("dev", "test"):
        shutil.move(_find_dir(staging / "raw", split), staging / "mlqa" / split)


TYDI_LANGUAGES = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
                  "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te"}
"""TyDi QA's language names (the prefix of every question id) → the ISO codes of the file names."""


def _split_tydiqa(payload: dict, split: str, out: Path) -> None:
    """One SQuAD-format TyDi QA GoldP file of all languages → ``tydiqa.goldp.<lang>.<split>.json`` each."""
    by_language: dict[str, list] = {}
    for article in payload["data"]:
        for paragraph in article["paragraphs"]:
            language = paragraph["qas"][0]["id"].split("-", 1)[0]
            if language not in TYDI_LANGUAGES:  # TyDi ids start with the language's name ("english-...")
                raise FetchError(f"TyDi QA question id {paragraph['qas'][0]['id']!r} does not start with a known "
                                 f"language name ({', '.join(TYDI_LANGUAGES)}); the publisher changed the format")
            code = TYDI_LANGUAGES[language]
            by_language.setdefault(code, []).append({"title": article.get("title", ""), "paragraphs": [paragraph]})
    for code, articles in by_language.items():
        data = {"version": payload.get("version", "TyDiQA-GoldP-1.1"), "data": articles}
        (out / f"tydiqa.goldp.{code}.{split}.json").write_text(json.dumps(data, ensure_ascii=False))


def _unpack_tydiqa(files: list[Path], staging: Path) -> None:
    """TyDi QA GoldP v1.1: the train JSON and the dev archive → per-language files (XTREME's layout)."""
    out = staging / "tydiqa-goldp"
    out.mkdir()
    for path in files:
        if path.suffix == ".json":
            _split_tydiqa(json.loads(path.read_text(encoding="utf-8")), "train", out)
        else:
            _extract(path, staging / "raw")
            for dev in sorted((staging / "raw").rglob("*.json")):
                _split_tydiqa(json.loads(dev.read_text(encoding="utf-8")), "dev", out)


def _write_tsv(path: Path, rows: Iterable[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\").writerows(rows)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _unpack_xnli(files: list[Path], staging: Path) -> None:
    """``XNLI-1.0.zip`` → ``xnli-dev/dev-<lang>.tsv`` (premise, hypothesis, label) and
    ``xnli-test-unlabelled/test-<lang>.tsv`` (premise, hypothesis: the labels are dropped, as in XTREME)."""
    _extract(files[0], staging / "raw")
    for split, target, labelled in (("dev", "xnli-dev", True), ("test", "xnli-test-unlabelled", False)):
        (staging / target).mkdir()
        rows: dict[str, list[list[str]]] = {}
        for row in _read_tsv(next((staging / "raw").rglob(f"xnli.{split}.tsv"))):
            fields = [row["sentence1"], row["sentence2"]] + ([row["gold_label"]] if labelled else [])
            rows.setdefault(row["language"], []).append(fields)
        for language, lines in rows.items():
            _write_tsv(staging / target / f"{split}-{language}.tsv", lines)


def _unpack_pawsx(files: list[Path], staging: Path) -> None:
    """``x-final.tar.gz`` → ``pawsx-dev/dev-<lang>.tsv`` (sentence1, sentence2, label; no header)."""
    _extract(files[0], staging / "raw")
    (staging / "pawsx-dev").mkdir()
    for dev in sorted((staging / "raw").rglob("dev_2k.tsv")):
        rows = [[r["sentence1"], r["sentence2"], r["label"]] for r in _read_tsv(dev)]
        _write_tsv(staging / "pawsx-dev" / f"dev-{dev.parent.name}.tsv", rows)


def _unpack_xcopa(files: list[Path], staging: Path) -> None:
    """XCOPA's repository archive (``data/<lang>/{val,test}.<lang>.jsonl``) and SuperGLUE's COPA (English)
    → ``xcopa/{train,val,test}-<lang>.jsonl``."""
    out = staging / "xcopa"
    out.mkdir()
    for i, path in enumerate(files):
        _extract(path, staging / f"raw{i}")
    for path in sorted(staging.glob("raw*/**/*.jsonl")):
        parts = path.name.split(".")  # val.et.jsonl (XCOPA) or val.jsonl (COPA, English)
        split, language = parts[0], (parts[1] if len(parts) == 3 else "en")
        if split in ("train", "val", "test") and "data-gmt" not in path.parts:
            shutil.copyfile(path, out / f"{split}-{language}.jsonl")
    licence = next(staging.glob("raw*/**/LICENSE*"), None)
    if licence is not None:
        shutil.copyfile(licence, out / "LICENSE.md")


_XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
# Computed from google-deepmind/xquad at commit 7d30520c (byte-identical raw files).
_XQUAD_SHA256 = {
    "ar": "abdabd7afed5c635d99cca0f3f0d0c9d9ed0bc77451e963c2e4e0638c29e486d",
    "de": "990b5d746746ed65ed4702ea5f35f99ffa4e2f1c390c07d003642acd937916f9",
    "el": "821cf0f88e73fa258fd2f548b19b6ec39f7025059e16f6f9fc8cd797c9c3663e",
    "en": "e4c57d1c9143aaa1c5d265ba5987a65f4e69528d2a98f29d6e75019b10344f29",
    "es": "dcbae93ec3a9f4b9e78fd834a171d6f96c1a875e10e15b7530b7e4ef4971e37e",
    "hi": "df2cce3532b37e9beb8979704b5c9a4bf874358f105395a298b89427b43b9d24",
    "ro": "94f8d54e93ad2b7dd2e76dd921a666b5b8eff2d4379df9f179c42b445f09643f",
    "ru": "208d5b1aa154c52b1b5c5eda16281e455e8fd198cdb9af3f469f0d6037d973bf",
    "th": "5cdda11d0e1e075f7872abf4e6ae830388ce7f617964d542308e9ae4257e0f43",
    "tr": "92179a564774b7696100d144c1e10870d0a966b6fccbdd254a65b9d2ab1971cc",
    "vi": "f619a1eb11fb42d3ab0834259e488a65f585447ef6154437bfb7199d85161a04",
    "zh": "691d0b3359bc6b8faa8de931dfdfe21d50a65861ae348e32a0d1a0190b0c8835",
}
_MBERT = "https://huggingface.co/google-bert/bert-base-multilingual-cased/resolve/main"

REGISTRY: dict[str, DataSet] = {
    dataset.name: dataset
    for dataset in (
        DataSet("xquad", ("xquad",), tuple(
            Download(f"https://raw.githubusercontent.com/google-deepmind/xquad/master/xquad.{lang}.json",
                     _XQUAD_SHA256[lang]) for lang in _XQUAD_LANGUAGES),
            _copy_into("xquad"), "XQuAD: SQuAD v1.1 dev translated into 11 languages, parallel (CC BY-SA 4.0)"),
        DataSet("mlqa", ("mlqa",), (Download("https://dl.fbaipublicfiles.com/MLQA/MLQA_V1.zip", None),),
                _unpack_mlqa, "MLQA v1 dev/test, 7 languages, every question/context pair (CC BY-SA 3.0)"),
        DataSet("tydiqa", ("tydiqa-goldp",), (
            Download("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-train.json", None),
            Download("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.tgz", None)),
            _unpack_tydiqa, "TyDi QA GoldP v1.1 train/dev, 9 languages (Apache-2.0)"),
        DataSet("xnli", ("xnli-dev", "xnli-test-unlabelled"),
                (Download("https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip", None),),
                _unpack_xnli, "XNLI 1.0 dev (labelled) and test (text only), 15 languages (CC BY-NC 4.0)"),
        DataSet("pawsx", ("pawsx-dev",),
                (Download("https://storage.googleapis.com/paws/pawsx/x-final.tar.gz", None),),
                _unpack_pawsx, "PAWS-X dev, 7 languages (free for any purpose, Google's PAWS terms)"),
        DataSet("xcopa", ("xcopa",), (
            Download("https://github.com/cambridgeltl/xcopa/archive/refs/heads/master.zip", None),
            Download("https://dl.fbaipublicfiles.com/glue/superglue/data/v2/COPA.zip", None)),
            _unpack_xcopa, "XCOPA val/test, 11 languages (CC BY 4.0) + English COPA (BSD-2)"),
        DataSet("mbert-tokenizer", ("tokenizers/mbert-cased",), tuple(
            Download(f"{_MBERT}/{name}", None)
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "config.json")),
            _copy_into("tokenizers/mbert-cased"),
            "multilingual BERT (cased) tokenizer from the Hugging Face Hub (Apache-2.0)"),
    )
}
"""Every set ``xdist data fetch`` knows, by name."""


# --------------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------------


def _load_pins() -> dict[str, str]:
    path = pins_file()
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FetchError(f"pins file {str(path)!r} is unreadable ({err}); delete it to pin the files again") from None
    return pins if isinstance(pins, dict) else {}


def _record_pin(url: str, sha256: str) -> None:
    path = pins_file()
    pins = _load_pins()
    pins[url] = sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(item: Download, directory: Path, *, progress: bool = True) -> Path:
    """Fetch ``item`` into ``directory`` (resuming a ``.part`` left by an interrupted attempt) and verify it.

    Returns the verified file. A checksum mismatch deletes what was downloaded and raises
    :class:`FetchError`; an interrupted transfer keeps the ``.part`` so the next call resumes it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / item.name
    partial = directory / f"{item.name}.part"
    expected = item.sha256 or _load_pins().get(item.url)
    if not target.is_file():
        _transfer(mirrored(item.url), partial, item.name, progress)
        os.replace(partial, target)
    actual = _sha256(target)
    if expected is None:
        _record_pin(item.url, actual)
        log.info("pinned %s: sha256 %s (first fetch; later fetches must match)", item.url, actual)
    elif actual != expected:
        target.unlink()
        source = "pinned in xdist/data/fetch.py" if item.sha256 else f"recorded on the first fetch in {pins_file()}"
        raise FetchError(
            f"checksum mismatch for {mirrored(item.url)}: sha256 {actual}, expected {expected} ({source}); the file "
            "was deleted and nothing was unpacked. The download was corrupted or the publisher (or mirror) "
            "changed the file: retry, check XDIST_DATA_MIRROR, or if the change is legitimate delete that pin"
        )
    return target


def _transfer(url: str, partial: Path, label: str, progress: bool) -> None:
    """Stream ``url`` into ``partial``, continuing after the bytes already there (HTTP Range)."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "xdist-data-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the .part is already whole
            return
        raise FetchError(f"download of {url} failed: HTTP {err.code} {err.reason}; check the address "
                         f"(or {MIRROR_ENV}) and retry") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"download of {url} failed: {reason}; check the network (or {MIRROR_ENV}) and retry, "
                         "or copy the data by hand and set XDIST_DATA to it") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                   disable=not progress or None, leave=False, file=sys.stderr)
        try:
            with open(partial, "ab" if resumed else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise FetchError(f"download of {url} was interrupted after {partial.stat().st_size} bytes ({err}); "
                             "run the same command again to resume it") from None
        finally:
            bar.close()
    if total is not None and partial.stat().st_size < total:
        raise FetchError(f"download of {url} was interrupted after {partial.stat().st_size} of {total} bytes; "
                         "run the same command again to resume it")


# --------------------------------------------------------------------------------------------------
# Fetching sets
# --------------------------------------------------------------------------------------------------


def missing_targets(dataset: DataSet, root: Path) -> list[str]:
    return [target for target in dataset.targets if not (root / target).exists()]


def fetch(name: str, root: Path | None = None, *, offline: bool | None = None, progress: bool = True,
          registry: dict[str, DataSet] | None = None) -> list[Path]:
    """Make sure data set ``name`` is in ``root`` (default :func:`default_data_dir`); returns its directories.

    Present directories are left alone. Otherwise the files are downloaded and verified, unpacked into a
    staging directory and renamed into place; the archives are deleted afterwards.
    """
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise ConfigValueError(f"unknown data set {name!r}; known: {', '.join(registry)} (see 'xdist data list')")
    dataset = registry[name]
    root = Path(root) if root is not None else default_data_dir()
    offline = offline_requested() if offline is None else offline
    missing = missing_targets(dataset, root)
    if not missing:
        log.info("%s: already in %s", name, root)
        return [root / t for t in dataset.targets]
    if offline:
        raise OfflineError(
            f"data set {name!r} is not in {str(root)!r} ({', '.join(missing)} missing) and offline mode forbids "
            "downloading it; run without --offline (and XDIST_OFFLINE) on a machine with internet access, "
            f"or copy it there, or set XDIST_DATA to a directory that has it"
        )
    downloads = root / ".downloads" / name
    try:
        files = [download(item, downloads, progress=progress) for item in dataset.downloads]
    except BaseException:
        _tidy(downloads)
        raise
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
        try:
            dataset.unpack(files, staging)
        except (KeyError, ValueError, OSError, zipfile.BadZipFile, tarfile.TarError) as err:
            if isinstance(err, UserError):
                raise
            raise FetchError(f"could not unpack {name!r} from {', '.join(map(str, files))}: {err}; the download does "
                             "not have the publisher's usual layout. Delete those files to fetch them again") from None
        for target in missing:
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / target, root / target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)
    _tidy(downloads)
    log.info("%s: fetched into %s", name, ", ".join(str(root / t) for t in missing))
    return [root / t for t in dataset.targets]


def _tidy(downloads: Path) -> None:
    """Remove the download directories when nothing worth keeping is left (a ``.part`` is kept to resume)."""
    for directory in (downloads, downloads.parent):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
