"""MBLM (Yang, Cui, Chen, Wang 2022; methods.md §B): a multilingual student with per-language branches,
distilled from several monolingual teachers, with zero-shot-aware training on mixtures of branches.

Only the paper's abstract is known; every choice below it is a reconstruction (methods.md §B.3) exposed as
a config field with the documented default.

* :mod:`xdist.branched` — the branched model (shared bottom layers, per-language top layers and heads, the
  mixture, the inference rule, single-branch export).
* :mod:`xdist.methods.mblm.loss` — supervised KD + optional CE + the mixture's KD; seeded Dirichlet draws.
* :class:`xdist.config.BranchesConfig`, :class:`xdist.config.MBLMConfig` — ``model.branches`` and ``method.mblm``.
* :mod:`xdist.methods.mblm.method` — the training method (teacher-logit cache built before the first epoch).
* :mod:`xdist.methods.teacher_cache` — the several-teacher, raw-text logit cache.
"""
