"""Both cores in a training or scoring step, with NumPy's BLAS on one thread in each.

A training step alternates work that BLAS can split over the cores (the big products) with
work that runs on one (the step-by-step recurrence, the softmax's passes over the logits,
the optimiser). With BLAS splitting its products, the second core idles through the rest,
and the BLAS pool's thread keeps spinning on it when a second thread of ours wants it (a
training step with the output layer split over two threads runs slower that way).
So :class:`Lanes` splits the work itself: the caller's thread runs the critical path
(recurrence, then the input gradients each layer below waits for) and a worker thread takes
side tasks (weight gradients nobody waits for until the step ends, its share of the output
layer, the first half of the chunk through each layer above while the caller's thread runs
the second half through the layer below), each calling BLAS on one thread. Scoring runs the
layers chunk after chunk, up to two chunks ahead of the output layer. The kernels release
the GIL, and so does NumPy inside BLAS and large ufuncs, so the two run at once.
"""

from __future__ import annotations

import collections
import contextlib
import functools

from . import blas


class Lanes:
    """Runs side tasks on ``count - 1`` worker threads beside the calling thread.

    Use as ``with lanes: ...``: everything submitted inside has finished at the end of the
    block, and a task's exception is raised there. With ``count`` 1, tasks run at once on the
    calling thread, in order: the serial schedule, with no threads at all.
    """

    def __init__(self, count: int = 1):
        self.count = max(1, int(count))
        self._tasks: collections.deque = collections.deque()
        self._pool = None
        if self.count > 1:                      # imported here: `score "a b c"` never needs it
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.count - 1, thread_name_prefix="rnngen-lane")
        self._running: list = []

    def submit(self, fn, *args) -> None:
        """Run ``fn(*args)`` on a free lane (or on the caller, at :meth:`drain`)."""
        if self._pool is None:
            fn(*args)
            return
        self._tasks.append((fn, args))
        self._running = [f for f in self._running if not f.done()]
        if len(self._running) < self.count - 1:
            self._running.append(self._pool.submit(self._work))

    def _work(self, keep: int = 0) -> None:
        """Run queued tasks on this thread, oldest first, until at most ``keep`` are queued."""
        while len(self._tasks) > keep:
            try:
                fn, args = self._tasks.popleft()
            except IndexError:                  # another lane took the last one
                return
            fn(*args)

    def drain(self) -> None:
        """Help with what is still queued, then wait for every lane: all submitted work is
        done when this returns. A task's error is raised here, after the tasks still queued
        are dropped and the running ones have finished."""
        if self._pool is None:
            return
        try:
            self._work()
            for f in self._running:
                f.result()
        except BaseException:
            self._abandon()
            raise
        self._running = []

    def catch_up(self, keep: int) -> None:
        """Run queued tasks on the calling thread until at most ``keep`` are left queued: a
        caller that makes tasks faster than the lanes finish them stays a bounded distance
        ahead, and does its share of them. A task's error is raised here (the block's
        exit then drops the rest)."""
        if self._pool is not None:
            self._work(keep)

    def _abandon(self) -> None:
        """Drop what is queued and wait for what runs: nothing writes into a failed step's
        arrays afterwards, and the next step starts with an empty queue."""
        from concurrent.futures import wait

        self._tasks.clear()
        wait(self._running)
        self._running = []

    def split(self, n: int, per_lane: int = 1) -> list[tuple[int, int]]:
        """range(n) as ``per_lane`` near-equal (start, stop) slices per lane; one slice when
        there is only one lane (a product split in pieces runs slower on one thread)."""
        pieces = self.count * per_lane if self.count > 1 else 1
        bounds = [n * k // pieces for k in range(pieces + 1)]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def map_rows(self, fn, n: int) -> None:
        """``fn(start, stop)`` over one slice of range(n) per lane, the first on the calling
        thread; returns when all are done."""
        first, *rest = self.split(n) or [(0, 0)]
        for a, b in rest:
            self.submit(fn, a, b)
        fn(*first)
        self.drain()

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.drain()
        else:
            self._abandon()


SERIAL = Lanes(1)


@functools.cache
def shared(count: int) -> Lanes:
    """One set of lanes per thread count for the process, so that worker threads are made
    once (not for concurrent callers: each drains the other's tasks)."""
    return SERIAL if count <= 1 else Lanes(count)


def training_lanes(threads: int, softmax: str) -> Lanes:
    """How a training step uses ``threads`` threads; sets NumPy's BLAS to match.

    Full and class softmax: one lane per thread, BLAS on one thread in each, which beats
    BLAS splitting every product while the recurrence, softmax passes and optimiser leave
    the other cores idle (the class softmax's products, one per class and too small for
    BLAS to split well, go to the lanes class by class). Hierarchical softmax: BLAS splits
    the products, lanes are serial.
    """
    if threads > 1 and softmax in ("full", "class"):
        blas.set_threads(1)
        return shared(threads)
    blas.set_threads(threads)
    return SERIAL


@contextlib.contextmanager
def training(threads: int, softmax: str):
    """:func:`training_lanes` inside the block; NumPy's BLAS threads as before it afterwards."""
    with blas.numpy_threads(blas.thread_count()):
        yield training_lanes(threads, softmax)
