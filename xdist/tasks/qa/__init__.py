"""Extractive QA: readers, cross-lingual sampling, sliding-window features, the QA model and the task object
(:class:`xdist.tasks.qa.task.QATask`, registered as ``qa``). Importing this package imports none of them."""
