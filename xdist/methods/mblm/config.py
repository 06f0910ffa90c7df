"""Configuration of MBLM: ``model.branches`` (the branched student) and ``method.mblm`` (the loss); the teachers
are ``method.teachers`` (``{language: checkpoint}``, checked against the branches by :func:`check_teachers`).

Typed dataclasses in the style of :mod:`xdist.config` (a docstring per field, strict loading, errors naming
the field). Every field below the abstract's sentences is a reconstruction (methods.md §B.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from xdist.config import _fail

_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z]+)?")


@dataclass
class BranchesConfig:
    """The branched student (:mod:`xdist.branched`): which languages get a branch, how deep, the mixture."""

    languages: list[str] = field(default_factory=list)
    """The supervised languages, one branch each (the branch order). Rows in other languages are zero-shot:
    at inference they take the mixture of all branches."""

    layers: int = 2
    """K: top encoder layers copied per branch, each copy initialised from the pretrained top K layers."""

    share_head: bool = True
    """One classification head for every branch (True) or one per branch (False)."""

    mixture: Literal["uniform", "dirichlet", "learned"] = "uniform"
    """Mixture weights over branches: ``uniform`` (1/M); ``dirichlet``: a fresh draw per micro-batch in
    training (``method.mblm.dirichlet_alpha``, seeded, resumed exactly), the Dirichlet's mean (uniform) at
    inference; ``learned``: a gate ``softmax(W h_cls + b)`` on the shared layers' [CLS], starting uniform."""

    representation: Literal["cls", "layers"] = "cls"
    """What is mixed: the branches' top-layer [CLS] vectors (``cls``), or the hidden states at every branch
    layer (``layers``: a mixture stream through the branch layers, M·K more layer passes)."""

    supervised_inference: Literal["branch", "mixture"] = "branch"
    """At inference a supervised language's rows take their own ``branch`` or the ``mixture``."""

    def __post_init__(self) -> None:
        if not self.languages:
            _fail("languages", "needs the supervised languages, one branch each (e.g. [en, de, zh])")
        for lang in self.languages:
            if not _LANGUAGE.fullmatch(lang):
                _fail("languages", f"expected language codes such as 'en', got {lang!r}")
        if len(set(self.languages)) != len(self.languages):
            _fail("languages", f"a language appears twice: {self.languages}")
        if self.layers < 0:
            _fail("layers", f"expected an integer >= 0, got {self.layers}")


@dataclass
class MBLMConfig:
    """MBLM's loss and teacher pass (:mod:`xdist.methods.mblm.loss` has the formula)."""

    temperature: float = 1.0
    """Distillation temperature T of both KD terms (scaled by T²)."""

    alpha_ce: float = 0.0
    """Weight of a hard-label CE on the own-branch logits (0 = pure distillation)."""

    mixture_weight: float = 1.0
    """λ: weight of the zero-shot-aware term (the mixture distilled to the row's teacher); 0 turns it off."""

    dirichlet_alpha: float = 1.0
    """Concentration of the Dirichlet draws (``model.branches.mixture: dirichlet``); 1 = uniform over the simplex."""

    seed: int = 0
    """Seed of the Dirichlet draws (the same on every rank: one mixture per micro-batch step)."""

    cache_batch_size: int = 64
    """Rows per teacher forward when the teacher-logit cache is built."""

    teacher_max_length: int | None = None
    """Tokens per row for the teachers (None = ``features.max_length``)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            _fail("temperature", f"expected a number > 0, got {self.temperature}")
        for name in ("alpha_ce", "mixture_weight"):
            if getattr(self, name) < 0:
                _fail(name, f"expected a number >= 0, got {getattr(self, name)}")
        if self.dirichlet_alpha <= 0:
            _fail("dirichlet_alpha", f"expected a number > 0, got {self.dirichlet_alpha}")
        if self.cache_batch_size < 1:
            _fail("cache_batch_size", f"expected a positive integer, got {self.cache_batch_size}")
        if self.teacher_max_length is not None and self.teacher_max_length < 8:
            _fail("teacher_max_length", f"expected an integer >= 8 or null, got {self.teacher_max_length}")


def check_teachers(branches: BranchesConfig, teachers: dict[str, str]) -> None:
    """``method.teachers``: one monolingual teacher per supervised language, ``{language: checkpoint}`` (a local
    ``save_pretrained`` sequence-classification model with the task's classes; its tokenizer is the one saved
    beside it, else the student's). Every branch language needs exactly one, every teacher a branch."""
    for lang in teachers:
        if not _LANGUAGE.fullmatch(lang):
            _fail("method.teachers", f"expected language codes as keys, such as 'en', got {lang!r}")
    missing = [lang for lang in branches.languages if lang not in teachers]
    extra = [lang for lang in teachers if lang not in branches.languages]
    if missing:
        _fail("method.teachers", f"no teacher for the supervised language(s) {missing} "
                                 f"(model.branches.languages: {branches.languages})")
    if extra:
        _fail("method.teachers", f"teacher(s) for {extra}, which have no branch in model.branches.languages "
                                 f"{branches.languages}")
