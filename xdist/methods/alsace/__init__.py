"""ALSACE (Zhao et al., NAACL 2024; methods.md §C): teacher-language selection by cross-lingual majority
vote on unlabelled parallel data, then cross-lingual self-distillation on teacher–teacher and
teacher–student language pairs.

* :mod:`xdist.methods.alsace.selection` — pseudo-labels by majority vote, R_l, S_l, the threshold ξ,
  the teacher/student split (or a fixed ranking / teacher list), ``selection.json`` and its chart.
* :mod:`xdist.methods.alsace.loss` — the consistency loss between the two sides of a stacked pair batch,
  through :func:`kernels.kd.kd_loss`.
* :mod:`xdist.data.parallel` — the language pairs (TT and TS, never SS) and the instance pairs.
"""
