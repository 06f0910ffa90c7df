"""Loading the Hugging Face fast tokenizer that every task featurises with (a local directory or a Hub id)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xdist.config import expand_env
from xdist.data.sources import DataError
from xdist.hub import resolve_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def tokenizer_directory(path: str | Path) -> Path:
    """The local directory ``path`` names, with ``${VAR}`` references and ``~`` expanded; a Hugging Face Hub
    id (``bert-base-multilingual-cased``) becomes its snapshot in the Hub cache (:mod:`xdist.hub`).

    A FeatureConfig built in code keeps its ``${XDIST_DATA:-...}`` default unexpanded (YAML-loaded ones are
    expanded), so whatever reads the tokenizer's files (loading, fingerprinting) resolves the path here.
    """
    return resolve_pretrained(expand_env(str(path), "features.tokenizer"), field="features.tokenizer",
                              kind="tokenizer")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a Hugging Face *fast* tokenizer from a local directory or a Hub id (see :func:`tokenizer_directory`).

    Raises :class:`DataError` when the directory does not exist, cannot be loaded, holds a slow (Python)
    tokenizer (character offsets need a fast one, i.e. a ``tokenizer.json``), or has no padding token.
    """
    directory = tokenizer_directory(path)
    expected = "a local directory with a Hugging Face fast tokenizer (tokenizer.json, tokenizer_config.json)"
    if not directory.is_dir():
        raise DataError(f"tokenizer directory {directory} does not exist; expected {expected}")
    # transformers is imported here, not at module level: readers and shard tools import this package
    # and should not pay for it.
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... depending on what is wrong
        raise DataError(f"cannot load a tokenizer from {directory} (expected {expected}): {err}") from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or not tokenizer.is_fast:
        raise DataError(
            f"{directory}: {type(tokenizer).__name__} is a slow (Python) tokenizer; answer spans need the "
            f"character offsets of a fast tokenizer, i.e. a tokenizer.json in the directory"
        )
    if tokenizer.pad_token_id is None:
        raise DataError(f"{directory}: the tokenizer has no padding token; features are padded to max_length")
    return tokenizer
