"""A Snakemake zygote for the tests (tests/workflow.py starts one per test process): it imports
what every Snakemake start imports once, then, for each request line on stdin (JSON: argv, env,
stdout, stderr paths), forks a child that takes the environment and the streams and runs
``snakemake.cli.main(argv)``, as the console script does. It answers the child's pid, then its
exit status (-N when killed by signal N), one line each; single-threaded, so forking is safe."""

import json
import os
import sys

import jsonschema  # noqa: F401
import pandas  # noqa: F401
import yaml  # noqa: F401
import yte  # noqa: F401
import snakemake.api  # noqa: F401
import snakemake.cli
import snakemake.dag  # noqa: F401
import snakemake.persistence  # noqa: F401
import snakemake.scheduling.job_scheduler  # noqa: F401
import snakemake.workflow  # noqa: F401
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

ExecutorPluginRegistry()  # imports every installed executor plugin once (the SLURM one: pandas)


def child(request: dict) -> None:
    os.environ.clear()
    os.environ.update(request["env"])
    for path, fd in ((request["stdout"], 1), (request["stderr"], 2)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.argv = ["snakemake", *request["argv"]]
    code = 1
    try:
        snakemake.cli.main(request["argv"])
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        atexit._run_exitfuncs()  # what the interpreter's exit runs (logging's flush of Snakemake's log file)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    main()
