"""What each of the two lanes does during rnngen's training steps, and when either waits.

    python tools/lane_timeline.py                         # RNN 1x200 on PTB, 2 threads
    python tools/lane_timeline.py --cell lstm --layers 2 --show 1

tools/profile_step.py samples only the calling thread; this wraps the lanes' task runner
(and the output layer's rows, the cells' recurrence and the drains) with clocks, runs the
steps that bench/rnngen_lm.py times (rnngen.train.train_step: loss and gradients, norm,
SGD), and prints how busy
each thread was, by task, over --steps steps after --warmup, then the timeline of the last
--show steps in ms from the step's start. Each clock costs ~1 µs; a step is ~50 ms.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))   # the bench harness

from common import PTB_DIR, set_thread_env  # noqa: E402
from run import prepare, ptb_missing  # noqa: E402

BATCH, BPTT = 20, 35                       # as bench/run.py's configurations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="rnn", choices=("rnn", "lstm", "gru"))
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--show", type=int, default=1, help="steps whose timeline is printed")
    ap.add_argument("--ptb", type=Path, default=PTB_DIR)
    args = ap.parse_args(argv)
    if ptb_missing(args.ptb):
        print(f"lane_timeline: skipped: {ptb_missing(args.ptb)}")
        return 0
    set_thread_env(2)                      # as bench/rnngen_lm.py --threads 2; the lanes then set BLAS to 1

    from common import load_data

    from rnngen import cells, lanes, softmax
    from rnngen import train as training
    from rnngen.model import Model, ModelConfig
    from rnngen.optim import SGD
    from rnngen.train import batchify, time_major, train_step

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ids.npz"
        prepare(args.ptb / "train.txt", args.ptb / "valid.txt", data)
        train_ids, _, tokens = load_data(data)
    events: list | None = None             # (on the worker?, what, start, end, depth) while recording
    busy: collections.Counter = collections.Counter()      # (on the worker?, what) -> seconds
    top: collections.Counter = collections.Counter()       # on the worker? -> seconds, outermost clocks only
    depth = threading.local()

    def clocked(what, fn):
        """``fn`` with a clock: its time is added to ``busy`` under ``what``."""
        def run(*a, **k):
            level = getattr(depth, "n", 0)
            depth.n = level + 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                depth.n = level
                worker = threading.current_thread().name.startswith("rnngen-lane")
                busy[(worker, what)] += end - t
                if level == 0:
                    top[worker] += end - t
                if events is not None:
                    events.append((worker, what, t, end, level))
        run.clocked = True
        return run

    def run_tasks(self, keep=0):           # Lanes._work, each task clocked under its function's name
        while len(self._tasks) > keep:
            try:
                fn, fn_args = self._tasks.popleft()
            except IndexError:
                return
            (fn if getattr(fn, "clocked", False) else clocked(getattr(fn, "__name__", "task"), fn))(*fn_args)

    lanes.Lanes._work = run_tasks
    lanes.Lanes.drain = clocked("(drain: wait + tasks)", lanes.Lanes.drain)
    for cell_class in cells.CELLS.values():
        cell_class.recur = clocked("recurrence", cell_class.recur)
    rows_of = softmax.FullSoftmax.loss_grad_rows

    def loss_grad_rows(self, *a):
        rows, result = rows_of(self, *a)
        return clocked("output rows", rows), result

    softmax.FullSoftmax.loss_grad_rows = loss_grad_rows

    config = ModelConfig(vocab_size=len(tokens), cell=args.cell, hidden=args.hidden, layers=args.layers)
    model = Model.init(config, seed=1)
    optim = SGD(model.params)
    inputs, targets = batchify(train_ids, BATCH)
    state = model.zero_state(BATCH)
    lane_set = lanes.training_lanes(2, "full")
    phases: collections.Counter = collections.Counter()        # the calling thread's time in each phase

    def phase(name, fn):
        """``fn`` with its time added to ``phases`` under ``name``."""
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - t
        return run

    model.loss_and_grads = phase("loss and gradients", model.loss_and_grads)    # the phases of train_step
    training.global_norm = phase("norm", training.global_norm)
    optim.step = phase("optimiser", optim.step)

    def step(i: int) -> None:
        nonlocal state
        x, y = time_major(inputs, i * BPTT, (i + 1) * BPTT), time_major(targets, i * BPTT, (i + 1) * BPTT)
        state = train_step(model, optim, x, y, state, 0.1, 5.0, None, lane_set).state

    for i in range(args.warmup):
        step(i)
    busy.clear()
    top.clear()
    phases.clear()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    wall = time.perf_counter() - start
    print(f"{args.cell} {args.layers}x{args.hidden}, 2 lanes: {1e3 * wall / args.steps:.1f} ms per step, "
          f"{BATCH * BPTT * args.steps / wall:,.0f} tokens/s over {args.steps} steps")
    for name, t in phases.items():
        print(f"  calling thread in {name:20s} {100 * t / wall:5.1f}%")
    worker_busy = 100 * top[True] / wall
    print(f"  worker thread busy               {worker_busy:5.1f}%  (idle {100 - worker_busy:.1f}%)")
    print("  by what (clocks inside other clocks, such as a task's recurrence, are counted in both):")
    for (worker, what), t in busy.most_common():
        print(f"    {'worker' if worker else 'caller'}  {what:28s} {100 * t / wall:5.1f}%")

    for i in range(args.warmup + args.steps, args.warmup + args.steps + args.show):
        events = []
        t0 = time.perf_counter()
        step(i)
        print(f"\nstep {i}: {1e3 * (time.perf_counter() - t0):.1f} ms; caller | worker, ms from the step's start")
        for worker, what, a, b, level in sorted(events, key=lambda e: e[2]):
            indent = ("          " if worker else "") + "  " * level
            print(f"  {indent}{what:28s} {1e3 * (a - t0):6.2f} -> {1e3 * (b - t0):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
