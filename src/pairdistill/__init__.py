"""PairDistill: pairwise relevance distillation for dense retrieval, as importable stages.

Every stage reads and writes Parquet through :mod:`pairdistill.io`; none of them knows about
Snakemake. The rules call them through ``python -m pairdistill <stage>`` (see :mod:`pairdistill.cli`).
"""

__version__ = "0.1.0"
