"""Cross-lingual sampling (CLS) of (question language, context language) pairs from parallel QA.

Carrino et al. build their stage-2 training set from XQuAD, which holds every question in every
language under the same id. For every question id ``q`` (``docs/methods.md`` §A.3, their
``src/sampler_qa.py``):

* **Pivot-centric** (``pivot_centric: true``, the authors' default with English as pivot): draw ``ntl``
  languages uniformly without replacement from the source's non-pivot languages and add the pivot:
  ``S_q``, ``|S_q| = ntl + 1``.
* **Non-pivot-centric** (``pivot_centric: false``, the authors' ``--non-en-centric``): draw ``ntl``
  languages from *all* the source's languages; the pivot is not forced: ``|S_q| = ntl``. (So
  non-centric ``ntl = 6`` over 7 languages gives the same 36 pairs per question as centric ``ntl = 5``;
  ``ntl = 1`` gives one monolingual example per question.) Their code draws exactly this way; the flag
  is not used in their shipped scripts.
* Special cases, as in their code: ``ntl`` >= the number of candidates (non-pivot languages, or all
  languages when non-centric) → ``S_q`` = every language; ``ntl = 0`` → every language, diagonal only.
* Every ordered pair ``(question_lang, context_lang) in S_q x S_q``, diagonal included, becomes one
  example (``ntl = 0``: only the diagonal): question text from the question language's file, context
  and answer spans from the context language's file.

What differs from their code, on purpose:

* **Per-question seeding.** Each question's draw uses its own RNG seeded from
  ``sha256(f"{seed}/{epoch}/{question id}")``, so it never depends on file order, on the other
  questions, or on the process (their ``random.sample`` over a Python ``set`` follows the set's
  string-hash order, which changes with every interpreter run unless ``PYTHONHASHSEED`` is fixed). The
  candidates are sorted before the draw, so the order of ``languages`` in the config does not matter.
* **Per-epoch draws** (``per_epoch: true``): epoch ``e`` draws with ``epoch = e`` (epoch 0 is the draw
  of the built-once mode). Their sampler draws once.
* **Candidates are the source's languages**, not "the languages in which this question has a valid
  record": with ``data.bad_records: skip`` a pair whose context record (or question) was skipped is left
  out (and counted), but the draw itself is unaffected. With the default ``error`` there is no difference.

The readers apply this in :func:`xdist.tasks.qa.readers.read_source`; this module holds the draw, the
report of what was drawn (:class:`SamplingReport`, logged and written into the shard manifest). The index
of per-epoch shard sets that ``xdist prepare`` writes and the training stream reads is
:mod:`xdist.data.epochs`.
"""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from xdist.config import SamplingConfig
from xdist.tasks.qa.examples import Cell, cell_name

# --------------------------------------------------------------------------------------------------
# The draw
# --------------------------------------------------------------------------------------------------


def _question_rng(seed: int, epoch: int, question_id: str) -> random.Random:
    """An RNG that depends on (seed, epoch, question id) only (explicit sha256, stable across processes)."""
    digest = hashlib.sha256(f"xdist-sampling/{seed}/{epoch}/{question_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def question_languages(
    question_id: str, languages: list[str], sampling: SamplingConfig, epoch: int = 0
) -> list[str]:
    """The language set ``S_q`` of one question (sorted), by the rules in the module docstring.

    ``languages`` are the source's languages; ``epoch`` only matters when ``sampling.per_epoch``.
    Raises ``ValueError`` when the pivot is needed but not among ``languages``.
    """
    every = sorted(set(languages))
    if sampling.pivot_centric:
        if sampling.pivot not in every:
            raise ValueError(f"sampling.pivot {sampling.pivot!r} is not among the source's languages {every}")
        candidates = [lang for lang in every if lang != sampling.pivot]
    else:
        candidates = every
    if sampling.ntl == 0 or sampling.ntl >= len(candidates):
        return every
    rng = _question_rng(sampling.seed, epoch if sampling.per_epoch else 0, question_id)
    drawn = rng.sample(candidates, sampling.ntl)
    if sampling.pivot_centric:
        drawn.append(sampling.pivot)
    return sorted(drawn)


def question_cells(
    question_id: str, languages: list[str], sampling: SamplingConfig, epoch: int = 0
) -> list[Cell]:
    """The (question language, context language) pairs one question contributes, in a fixed order."""
    chosen = question_languages(question_id, languages, sampling, epoch)
    if sampling.ntl == 0:
        return [(lang, lang) for lang in chosen]
    return [(q, c) for q in chosen for c in chosen]


# --------------------------------------------------------------------------------------------------
# What was drawn
# --------------------------------------------------------------------------------------------------


@dataclass
class SamplingReport:
    """Counts of one sampled read: questions, examples, pairs per question, per cell, per language."""

    parameters: dict[str, Any]
    """The :class:`~xdist.config.SamplingConfig` values."""
    epoch: int
    """The epoch whose draw this is (0 for the built-once mode)."""
    questions: int = 0
    """Questions that contributed at least one example."""
    examples: int = 0
    pairs_per_question: dict[int, int] = field(default_factory=dict)
    """Histogram: number of pairs → number of questions with that many."""
    cells: dict[str, int] = field(default_factory=dict)
    """Examples per ``"q-c"`` cell."""
    languages: dict[str, int] = field(default_factory=dict)
    """Questions whose drawn set contains each language."""

    @classmethod
    def start(cls, sampling: SamplingConfig, epoch: int) -> SamplingReport:
        return cls(parameters=asdict(sampling), epoch=epoch if sampling.per_epoch else 0)

    def add(self, chosen: list[str], cells: list[Cell]) -> None:
        """Count one question: its drawn languages and the pairs it actually contributed."""
        if not cells:
            return
        self.questions += 1
        self.examples += len(cells)
        self.pairs_per_question[len(cells)] = self.pairs_per_question.get(len(cells), 0) + 1
        for q, c in cells:
            name = cell_name(q, c)
            self.cells[name] = self.cells.get(name, 0) + 1
        for lang in chosen:
            self.languages[lang] = self.languages.get(lang, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for manifests (histogram keys as strings, as JSON needs)."""
        data = asdict(self)
        data["pairs_per_question"] = {str(k): v for k, v in sorted(self.pairs_per_question.items())}
        data["cells"] = dict(sorted(self.cells.items()))
        data["languages"] = dict(sorted(self.languages.items()))
        return data

    def summary(self) -> str:
        """One paragraph for the log."""
        per_question = ", ".join(f"{n} pairs: {count}" for n, count in sorted(self.pairs_per_question.items()))
        counts = list(self.cells.values())
        spread = (
            f"{len(counts)} cells, {min(counts)}-{max(counts)} examples per cell "
            f"(mean {statistics.fmean(counts):.1f})" if counts else "no cells"
        )
        p = self.parameters
        mode = f"pivot {p['pivot']}" if p["pivot_centric"] else "no pivot"
        return (
            f"sampled ntl={p['ntl']} ({mode}, seed {p['seed']}, epoch {self.epoch}): {self.questions} questions, "
            f"{self.examples} examples; questions by pairs per question: {per_question or 'none'}; {spread}; "
            f"questions per language: {', '.join(f'{k} {v}' for k, v in sorted(self.languages.items()))}\n"
            f"  examples per cell: {', '.join(f'{k} {v}' for k, v in sorted(self.cells.items()))}"
        )
