"""Loaders of the evaluation-only collections, each written as the pipeline's Parquet artifacts.

- :mod:`pairdistill.loaders.lotte`: LoTTE (ColBERTv2's long-tail topics), answer passages as qrels;
- :mod:`pairdistill.loaders.qa`: DPR's open-domain QA files, passages and answer strings.

The training formats (BEIR layout, MS MARCO TSV) are read by :mod:`pairdistill.data` and
:mod:`pairdistill.msmarco`. Every loader reports bad input as an
:class:`~pairdistill.errors.InputError` naming the file, the line and the problem, and writes
nothing unless all of its inputs pass.
"""
