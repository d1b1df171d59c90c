"""Readers of every input format, each written as the pipeline's Parquet artifacts.

- :mod:`pairdistill.loaders.common`: numbered lines, the id and file checks, the frames all share;
- :mod:`pairdistill.loaders.beir`: the BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``);
- :mod:`pairdistill.loaders.msmarco`: MS MARCO's passage-ranking TSV files, the collection streamed;
- :mod:`pairdistill.loaders.lotte`: LoTTE (ColBERTv2's long-tail topics), answer passages as qrels;
- :mod:`pairdistill.loaders.qa`: DPR's open-domain QA files, passages and answer strings.

The training formats are reached through :func:`pairdistill.data.prepare`. Imports run one way:
``common`` imports no other loader, the format readers import ``common`` (LoTTE streams its
collection through ``msmarco``), and :mod:`pairdistill.data` imports the readers. Every loader
reports bad input as an :class:`~pairdistill.errors.InputError` naming the file, the line and the
problem, and writes nothing unless all of its inputs pass.
"""
