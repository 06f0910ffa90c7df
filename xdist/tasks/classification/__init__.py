"""The cross-lingual classification family (XNLI, PAWS-X, XCOPA, generic JSONL/CSV/TSV and Hugging Face
sources) as the ``classification`` task (:class:`~xdist.tasks.classification.task.ClassificationTask`).

Modules: ``formats`` (what each source format implies), ``readers`` (sources -> examples, parallelism
checked, grouped split), ``features`` (sentence pairs, prompts, choices -> arrays), ``verbalizer``,
``heads`` (models; class logits ``[B, C]`` and the prompt head's MLM logits at the mask ``[B, V]``),
``metrics`` (accuracy per language, disparity, McNemar), ``scoring`` (one evaluation set -> ``EvalResult``),
``task``.
"""
