"""A preemption on cue, for the tests: ``PAIRDISTILL_KILL_AFTER="<stage>:<N>"``.

With the variable set, a job of stage ``<stage>`` (its command-line name: ``pointwise``,
``pairwise``, ``train``) is killed with SIGKILL right after the N-th resume point it makes durable
in this process: a scoring part renamed into place (:func:`shards.score_in_parts`) or a training
state saved (:func:`train.state.save_state`). Points a rerun found already made are not counted.

What dies is the job's process group when that group is a session of its own (its leader was
started with ``setsid`` / ``start_new_session=True``): a workflow started that way, as the tests
start Snakemake, loses Snakemake and every job at once, as on a preempted machine, and is left
with its lock and incomplete markers for ``--unlock`` and ``--rerun-incomplete``. In any other
group (a shell's job, a test runner's) only the job's own process is killed, so setting the
variable by hand never takes down what started the workflow; Snakemake then sees a failed job.

The group is the one of the job's first process, not of the process that makes the point durable:
a data-parallel job's processes run in groups of their own under torch.distributed.run, so the
first process (the launcher) passes its group down in :data:`GROUP_ENV`; its death takes
torch.distributed.run with it, and that one's the other processes (``runtime.die_with_parent``).

The variable is read in one place, :func:`arm`, which ``cli.main`` calls with the stage it runs,
in the launcher too; unset, or naming another stage, :func:`durable` returns at once.
"""

from __future__ import annotations

import os
import signal

ENV = "PAIRDISTILL_KILL_AFTER"
GROUP_ENV = "PAIRDISTILL_KILL_GROUP"  # set by arm for the job's later processes: the group to kill, or ""

_left: int | None = None  # durable points this process makes before it is killed; None: never


def arm(stage: str) -> None:
    """Read :data:`ENV`; if it names ``stage``, kill this job after its N-th durable point."""
    global _left
    value = os.environ.get(ENV)
    if not value:
        return
    name, sep, count = value.rpartition(":")
    if not sep or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={value!r}: expected <stage>:<N>, N >= 1 (e.g. pointwise:2)")
    if GROUP_ENV not in os.environ:  # the job's first process: its group, if that is its session's
        group = os.getpgid(0)
        os.environ[GROUP_ENV] = str(group) if group == os.getsid(0) else ""
    if name == stage:
        _left = int(count)


def durable(what: str) -> None:
    """Called once a resume point (``what``, for the log) is durable; kills the job at the N-th."""
    global _left
    if _left is None:
        return
    _left -= 1
    if _left > 0:
        return
    group = os.environ.get(GROUP_ENV)
    print(f"{ENV}: killing {'process group ' + group if group else 'process ' + str(os.getpid())} "
          f"after {what}", flush=True)
    if group:
        os.killpg(int(group), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
