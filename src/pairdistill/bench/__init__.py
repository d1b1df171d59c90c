"""Benchmarks (measurements behind the choices and tables in docs/, not tests), run by name::

    python -m pairdistill.bench --help                 # the benchmarks and what each measures
    python -m pairdistill.bench student --results results --set lr=1e-4

Each is a module here with its own ``main(argv)``; :data:`BENCHMARKS` names them. Also here:
:mod:`.benchmark_files`, the ``pairdistill benchmarks`` stage's summary of Snakemake's
``benchmark:`` files. This module imports nothing heavy: the stage and the report import it.
"""

# the name on the command line -> the module of this package that runs it
BENCHMARKS = {
    "partitions": "partitions",
    "pair-features": "pair_features",
    "student": "student",
    "train-memory": "train_memory",
    "projection": "projection",
    "memory": "memory",
    "datascale": "datascale",
    "inference": "inference",
    "teacher-throughput": "teacher_throughput",
    "export": "export",
    "backend-effect": "backend_effect",
}
