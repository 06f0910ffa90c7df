"""The data layer: raw QA files → examples → tokenised features (→ shards, in :mod:`xdist.data.shards`).

Importing this package is cheap: ``transformers`` is only imported when a tokenizer is loaded.
"""

from xdist.data.examples import Answer, QAExample, QAFeature
from xdist.data.features import (
    FeatureResult,
    FeatureStats,
    featurize,
    iter_features,
    truncate_questions,
)
from xdist.data.readers import ReadResult, read_source, split_titles, title_is_eval
from xdist.data.sources import DataError, SkipReport, resolve_path
from xdist.data.tokenizer import load_tokenizer

__all__ = [
    "Answer",
    "DataError",
    "FeatureResult",
    "FeatureStats",
    "QAExample",
    "QAFeature",
    "ReadResult",
    "SkipReport",
    "featurize",
    "iter_features",
    "load_tokenizer",
    "read_source",
    "resolve_path",
    "split_titles",
    "title_is_eval",
    "truncate_questions",
]
