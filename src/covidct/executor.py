"""Run independent tasks one after another or on a Dask cluster: ``run_tasks(tasks, executor)``.

``executor`` is ``"local"`` (in this process, in order), ``"dask"`` (a ``dask.distributed.LocalCluster`` on
loopback: one single-threaded worker process per core, or ``workers``) or ``"dask:ADDRESS"`` (an existing
scheduler, e.g. ``dask:tcp://10.0.0.5:8786`` started by ``dask scheduler`` or by ``dask-jobqueue`` on SLURM:
docs/scaling.md).

A task is a named call whose outputs are files written atomically (``covidct.data.writes``) and which a
rerun skips when they are complete: a grid run, a cross-validation fold, a prediction shard. That is what
makes a cluster safe: when a worker dies mid-task (killed, out of memory, node lost) the scheduler runs the
task again on another worker (``distributed.scheduler.allowed-failures``, 3 by default), the half-written
temporary file of the dead attempt is never renamed into place, and the outputs are those of a sequential
run. ``retries`` re-runs a task that *raised*.

Dask is optional (``pip install "covidct[scale]"``); ``local`` needs nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from covidct.errors import CovidctError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "dask", "dask:ADDRESS")


@dataclass(frozen=True)
class Task:
    """One independent unit of work.

    Attributes:
        key: a unique name (the run name, ``shard-00003``): the Dask task key and the progress label.
        function: a module-level function (pickled by reference for the workers).
        args: positional arguments (picklable).
        kwargs: keyword arguments (picklable).
    """

    key: str
    function: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn`` of a task's child process: killed with its worker on Linux (no orphan keeps writing)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_in_fresh_process(module: str, arguments: tuple, what: str) -> str:
    """Run ``python -m MODULE TASK.pkl`` with ``arguments`` pickled, and return the last line it printed.

    The module's ``__main__`` block reads the pickle (``read_task_arguments``) and prints the task's status line.
    A fresh process gives each task a clean framework state and returns its memory when it ends.

    Raises:
        CovidctError: the process failed or printed nothing (its stderr's end is quoted, ``what`` names the task).
    """
    with tempfile.TemporaryDirectory(prefix="covidct-task-") as folder:
        path = Path(folder) / "task.pkl"
        path.write_bytes(pickle.dumps(arguments))
        done = subprocess.run([sys.executable, "-m", module, str(path)], capture_output=True, text=True,
                              preexec_fn=die_with_parent)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise CovidctError(f"{what}: its process ended with exit code {done.returncode}: {done.stderr.strip()[-2000:]}")
    return lines[-1]


def read_task_arguments(argv: list[str]) -> tuple:
    """The arguments ``run_in_fresh_process`` pickled, in the child (``argv``: ``sys.argv``)."""
    return pickle.loads(Path(argv[1]).read_bytes())


def parse_executor(text: str) -> tuple[str, str | None]:
    """``"local"`` -> ("local", None); ``"dask"`` -> ("dask", None); ``"dask:ADDRESS"`` -> ("dask", ADDRESS).

    Raises:
        CovidctError: anything else.
    """
    text = (text or "local").strip()
    if text == "local":
        return "local", None
    if text == "dask":
        return "dask", None
    if text.startswith("dask:") and len(text) > len("dask:"):
        return "dask", text[len("dask:"):]
    raise CovidctError(f"--executor {text!r}: use local, dask (a LocalCluster on this machine) or dask:ADDRESS "
                       "(a running scheduler, e.g. dask:tcp://HOST:8786).")


def _progress(total: int, enabled: bool, what: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="task")


def _run_local(tasks: list[Task], progress: bool, what: str) -> dict:
    results, bar = {}, _progress(len(tasks), progress, what)
    for task in tasks:
        results[task.key] = task.function(*task.args, **task.kwargs)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def _dask_client(address: str | None, workers: int | None):
    """(client, cluster or None): a client of ``address``, else of a new LocalCluster on loopback."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as error:
        raise CovidctError('--executor dask needs dask.distributed: pip install "covidct[scale]" '
                           '(or "dask[distributed]"), or use --executor local.') from error
    if address:
        try:
            return Client(address, timeout="30s"), None
        except (OSError, TimeoutError) as error:
            raise CovidctError(f"--executor dask:{address}: no Dask scheduler answered ({error}). Start one "
                               "(`dask scheduler`, or dask-jobqueue: docs/scaling.md) or check the address.") from error
    count = workers or max(1, min(os.cpu_count() or 1, 8))
    cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    return Client(cluster), cluster


def _run_dask(tasks: list[Task], address: str | None, workers: int | None, retries: int, progress: bool,
              what: str) -> dict:
    from dask.distributed import as_completed

    client, cluster = _dask_client(address, workers)
    bar = _progress(len(tasks), progress, what)
    try:
        futures = {client.submit(task.function, *task.args, key=task.key, retries=retries, pure=False,
                                 **task.kwargs): task.key for task in tasks}
        results = {}
        for future in as_completed(futures):
            key = futures[future]
            results[key] = future.result()  # re-raises the task's own error (after its retries)
            if bar is not None:
                bar.update(1)
        return {task.key: results[task.key] for task in tasks}
    finally:
        if bar is not None:
            bar.close()
        client.close()
        if cluster is not None:
            cluster.close()


def run_tasks(tasks: Iterable[Task], executor: str = "local", workers: int | None = None, retries: int = 1,
              progress: bool = True, what: str = "tasks") -> dict:
    """Run every task and return ``{key: result}`` in task order.

    Args:
        tasks: the tasks (unique keys).
        executor: ``local``, ``dask`` or ``dask:ADDRESS`` (``parse_executor``).
        workers: worker processes of the LocalCluster (``dask`` without an address; default: the cores, <= 8).
        retries: extra attempts of a task that raised (Dask only; a task whose *worker died* is rescheduled by
            the scheduler regardless).
        progress: a progress bar over the tasks.
        what: the progress bar's label.

    Returns:
        The results by key, in the order of ``tasks``.

    Raises:
        CovidctError: a bad executor, duplicate keys, Dask missing or unreachable; a task's own error is
            re-raised unchanged (the other tasks' files are kept, so a rerun continues).
    """
    tasks = list(tasks)
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise CovidctError(f"run_tasks: task key {duplicate!r} appears twice; keys name the tasks and must be unique.")
    kind, address = parse_executor(executor)
    if not tasks:
        return {}
    log.info("%d %s on %s", len(tasks), what, executor)
    if kind == "local":
        return _run_local(tasks, progress, what)
    return _run_dask(tasks, address, workers, retries, progress, what)


__all__ = ["EXECUTORS", "Task", "die_with_parent", "parse_executor", "read_task_arguments", "run_in_fresh_process",
           "run_tasks"]
