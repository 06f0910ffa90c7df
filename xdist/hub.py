"""Models and tokenizers by Hugging Face Hub id or local directory (``model.checkpoint``, ``features.tokenizer``).

A value that names an existing directory is used as it is. Anything else that looks like a Hub id
(``bert-base-multilingual-cased``, ``FacebookAI/xlm-roberta-large``) is resolved the way ``transformers``
resolves ``from_pretrained`` ids — through ``huggingface_hub`` and its cache (``HF_HOME``), honouring
``HF_HUB_OFFLINE`` — to the local snapshot directory, which everything downstream (loading,
fingerprinting, export) then reads like any other directory. Only safetensors weights are fetched
(never pickled ``*.bin``). Resolution is remembered per process, so the Hub is asked once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from xdist.errors import MissingPathError, OfflineError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "vocab.txt", "config.json", "*.model")
"""Files of a Hub repository a tokenizer needs (``config.json`` tells ``AutoTokenizer`` the model type)."""

MODEL_PATTERNS = ("*.json", "*.safetensors", "vocab.txt", "*.model")
"""Files of a Hub repository a model checkpoint needs: configs, safetensors weights, tokenizer files."""

_resolved: dict[tuple[str, str], Path] = {}


def is_hub_id(value: str) -> bool:
    """True when ``value`` is not a local path but has the shape of a Hub id (``name`` or ``org/name``)."""
    if value.startswith((".", "/", "~")) or Path(value).exists():
        return False
    return _HUB_ID.fullmatch(value) is not None


def resolve_pretrained(value: str | os.PathLike, *, field: str, kind: str = "model") -> Path:
    """The local directory of ``value``: itself if it is a directory (or not a Hub id), else the Hub snapshot.

    ``field`` names the config field in messages; ``kind`` is ``"model"`` or ``"tokenizer"`` (which files
    to fetch). A Hub id that is neither cached nor downloadable (``HF_HUB_OFFLINE=1``, no network) raises
    :class:`OfflineError`; an id the Hub does not know raises :class:`MissingPathError`.
    """
    text = os.path.expanduser(str(value))
    if not is_hub_id(text):
        return Path(text)
    key = (text, kind)
    if key in _resolved:
        return _resolved[key]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = list(TOKENIZER_PATTERNS if kind == "tokenizer" else MODEL_PATTERNS)
    try:
        directory = Path(snapshot_download(text, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise OfflineError(
            f"{field} {text!r} is neither a local directory nor in the Hugging Face cache, and it cannot be "
            f"downloaded now ({'HF_HUB_OFFLINE=1' if _offline() else 'no connection to the Hub'}): set {field} "
            f"to a local copy of the {kind} (a directory with its files), or run once with the Hub reachable"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise MissingPathError(
            f"{field} {text!r} is not a local directory and the Hugging Face Hub has no repository of that "
            "name: check the spelling (e.g. bert-base-multilingual-cased) or give the path of a local copy"
        ) from None
    _resolved[key] = directory
    return directory


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
