"""How training batches are prepared: ``training.input_pipeline`` (``inline``, ``threaded`` or ``auto``).

- ``inline``: a batch is read and augmented when the trainer asks for it. On TensorFlow, Keras already runs the
  batch source on a ``tf.data`` thread with prefetching, so reading and augmenting overlap the train step there;
  on JAX and PyTorch they run on the training thread, between steps.
- ``threaded``: one background thread prepares the next ``depth`` batches, in order, while the train step
  runs (``Prefetcher``). One thread and in-order requests keep the random draws in the order ``inline`` makes
  them, so both give the same batches, pixel for pixel, and a resumed run draws the batches of an uninterrupted
  one.
- ``auto``: ``inline`` for now. On the 2-core CPU the threaded pipeline measured no faster than inline (the
  augmentation and the train step share the same cores; ``benchmarks/bench_pipeline.py``, BENCHMARKS.md); on a
  GPU, where the train step leaves the host free, it is the candidate default, not measured yet
  (``benchmarks/device/pipeline_gpu.sh``).

The augmentation itself (``covidct.train.augment.BatchAugmenter``) is the same in every pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from covidct.config.schema import INPUT_PIPELINES
from covidct.errors import CovidctError, did_you_mean


def resolve_pipeline(setting: str | None) -> str:
    """``inline`` or ``threaded`` for ``training.input_pipeline`` on the current backend (None: ``auto``).

    Raises:
        CovidctError: an unknown setting.
    """
    setting = "auto" if setting is None else str(setting)
    if setting not in INPUT_PIPELINES:
        raise CovidctError(f"training.input_pipeline: {setting!r} is not one of {list(INPUT_PIPELINES)}."
                           f"{did_you_mean(setting, INPUT_PIPELINES)}")
    return "inline" if setting == "auto" else setting


class Prefetcher:
    """Batches ``make(index)`` computed ahead on one background thread, handed out by index.

    Args:
        make: ``index -> batch`` (called on the background thread, one call at a time, in increasing index order
            after each ``reset``).
        depth: batches prepared ahead of the one asked for.

    ``get(index, length)`` returns ``make(index)`` and queues ``index + 1 ... index + depth`` (below ``length``).
    A batch that was not queued (a jump, the first of an epoch) first waits for the batches in flight and drops
    the queued ones, then is computed, so the calls to ``make`` happen in the order the batches were asked for
    plus at most ``depth`` batches ahead. ``reset()`` (before re-seeding, at an epoch start) waits for the
    batch being computed and drops the others.
    """

    def __init__(self, make: Callable, depth: int = 2):
        if depth < 1:
            raise ValueError(f"Prefetcher: depth must be >= 1, got {depth}")
        self.make = make
        self.depth = int(depth)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[int, Future] = {}
        self._next = None  # the next index to queue

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidct-batches")
        return self._pool

    def _drop(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        for future in self._ahead.values():
            if not future.cancelled():
                try:
                    future.result()  # let it finish: its draws were made, the stream is consistent
                except Exception:  # noqa: BLE001 - an abandoned batch's error is not this request's
                    pass
        self._ahead.clear()
        self._next = None

    def get(self, index: int, length: int):
        with self._lock:
            future = self._ahead.pop(index, None)
            if future is None:
                self._drop()
                future = self._executor().submit(self.make, index)
                self._next = index + 1
            for ahead in range(max(self._next, index + 1), min(index + 1 + self.depth, length)):
                self._ahead[ahead] = self._executor().submit(self.make, ahead)
                self._next = ahead + 1
        return future.result()

    def reset(self) -> None:
        with self._lock:
            self._drop()

    def close(self) -> None:
        """Drop the queued batches and stop the thread (a later ``get`` starts a new one)."""
        with self._lock:
            self._drop()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __getstate__(self):  # a sequence sent to another process starts without threads
        return {"make": self.make, "depth": self.depth}

    def __setstate__(self, state):
        self.__init__(state["make"], state["depth"])


__all__ = ["INPUT_PIPELINES", "Prefetcher", "resolve_pipeline"]
