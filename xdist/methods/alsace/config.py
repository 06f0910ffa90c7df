"""Configuration of ALSACE (``method.alsace``): teacher selection, pair construction, the consistency loss.

Typed dataclasses in the style of :mod:`xdist.config` (a docstring per field, strict loading, errors
naming the field). One job file serves every ALSACE stage after stage 0: ``xdist select-teachers`` reads
``selection``, ``xdist prepare`` reads ``selection`` (its file) and ``pairs``, ``xdist train`` the loss
fields. The unlabelled parallel set is the job's training source (``data.train``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from xdist.config import _fail


@dataclass
class SelectionConfig:
    """Teacher-language selection (:mod:`xdist.methods.alsace.selection` has the exact rules)."""

    mode: Literal["vote", "ranking", "teachers", "random"] = "vote"
    """``vote``: majority vote of the stage-0 model on the unlabelled set (``xdist select-teachers``);
    ``ranking``: the fixed ``ranking`` with its last ``n_students`` languages as students (the authors'
    released code); ``teachers``: the fixed ``teachers`` list; ``random``: a seeded random split with
    ``n_students`` students (the "no selection" ablation)."""

    tie_break: Literal["probability", "lowest", "exclude"] = "probability"
    """Tied majority votes: the tied class with the highest summed probability, the lowest class index, or
    no pseudo-label (the instance does not count)."""

    reliability: Literal["probability", "agreement"] = "probability"
    """R_l: mean probability of the pseudo-label (the paper's "average confidence"), or the fraction of
    instances whose argmax is the pseudo-label."""

    normalise: Literal["sum", "softmax"] = "sum"
    """S_l = R_l / Σ R (``sum``) or exp(R_l) / Σ exp(R) (``softmax``); the report names the languages the
    other choice would move."""

    comparison: Literal[">", ">="] = ">"
    """Teachers are the languages with S_l > ξ (or >= ξ), ξ = mean S."""

    ranking: list[str] | None = None
    """``ranking`` mode: every language, most reliable first (the authors' XNLI ranking: en, fr, bg, es, de,
    vi, ru, el, zh, th, tr, hi, ar, ur, sw)."""

    n_students: int | None = None
    """``ranking``/``random`` modes: how many languages are students (the authors' XNLI script: 8)."""

    teachers: list[str] | None = None
    """``teachers`` mode: the teacher languages, most reliable first."""

    seed: int = 100
    """``random`` mode: seed of the split."""

    max_instances: int | None = None
    """Vote on the first this many instances of the unlabelled set (None = all of them)."""

    file: str | None = None
    """The selection file ``xdist select-teachers`` writes and ``xdist prepare`` reads. None =
    ``<train.output_dir>/selection/selection.json``. Not needed by the modes that use no model: prepare
    computes those splits itself."""

    def __post_init__(self) -> None:
        if self.mode in ("ranking", "random") and self.n_students is None:
            _fail("n_students", f"mode {self.mode!r} needs the number of student languages")
        if self.mode == "ranking" and not self.ranking:
            _fail("ranking", "mode 'ranking' needs the languages, most reliable first")
        if self.mode == "teachers" and not self.teachers:
            _fail("teachers", "mode 'teachers' needs the teacher languages")
        if self.n_students is not None and self.n_students < 0:
            _fail("n_students", f"expected an integer >= 0, got {self.n_students}")
        if self.max_instances is not None and self.max_instances < 1:
            _fail("max_instances", f"expected a positive integer or null, got {self.max_instances}")
        for name in ("ranking", "teachers"):
            for lang in getattr(self, name) or []:
                if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z]+)?", lang):
                    _fail(name, f"expected language codes such as 'en', got {lang!r}")


@dataclass
class PairsConfig:
    """The distillation pairs ``xdist prepare`` builds (:mod:`xdist.data.parallel` has the exact rules)."""

    per_pair: int = 500
    """Parallel instances per language pair: the first this many of the unlabelled set (the authors' 500)."""

    seed: int = 100
    """Seed of the shuffle of all pairs (the authors' seed 100)."""

    student_pairs: bool = True
    """Include teacher–student pairs (False: teacher–teacher only, the paper's "students removed from the
    distillation groups" ablation). Student–student pairs are never built."""

    label_languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages whose gold labels (when the unlabelled set has any) are kept for the optional CE term
    (``alpha_ce``); every other row is unlabelled. English only is the zero-shot setting."""

    def __post_init__(self) -> None:
        if self.per_pair < 1:
            _fail("per_pair", f"expected a positive integer, got {self.per_pair}")


@dataclass
class AlsaceConfig:
    """ALSACE (Zhao et al. 2024): selection, pairs and the consistency loss (:mod:`xdist.methods.alsace.loss`)."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """How teacher and student languages are chosen."""

    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Which parallel instance pairs are distilled."""

    direction: Literal["code", "teacher_to_student"] = "code"
    """``code``: KL(P_second ‖ P_first) with gradients into both sides (the authors' ``get_KL_loss``);
    ``teacher_to_student``: KL(P_first ‖ P_second) with the first (higher-ranked) side detached (the
    paper's reading)."""

    divergence: Literal["kl", "jsd"] = "kl"
    """KL, or the symmetric Jensen–Shannon divergence (the authors' commented-out variant)."""

    temperature: float = 1.0
    """Temperature T of both distributions (the authors: 1)."""

    t2_scaling: bool = True
    """Multiply the divergence by T² (no effect at T = 1)."""

    alpha_kl: float = 1.0
    """Weight of the consistency term."""

    alpha_ce: float = 0.0
    """Weight of a CE term on the rows that keep a gold label (``pairs.label_languages``); 0 = the authors'."""

    level: Literal["classes", "vocab"] = "classes"
    """Distributions compared: over the classes (verbalizer logits, the authors), or the full MLM
    distribution at the mask (prompt head only; the vocabulary-scale kernel's use)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            _fail("temperature", f"expected a number > 0, got {self.temperature}")
        for name in ("alpha_kl", "alpha_ce"):
            if getattr(self, name) < 0:
                _fail(name, f"expected a number >= 0, got {getattr(self, name)}")
        if self.alpha_ce > 0 and self.level == "vocab":
            _fail("alpha_ce", "the CE term reads class logits; it is not available with level 'vocab'")
