"""Data-parallel training over MPI on this machine, and a scaling model from what it measures.

    make bench-mpi                     # about a minute on 2 cores
    python bench/mpi.py --steps 20     # fewer steps

Runs the same training steps (PTB, an RNN of 200 hidden units, full softmax over 10k
words, batch 20 x bptt 35, Adam) as 1 process x 2 threads (lanes) and as 2 MPI ranks x 1
thread, and times each step's parts: the forward and backward pass (compute), the one
all-reduce of the gradients (with their packing), and the norm and update. Then times a
bare MPI all-reduce of several sizes, and from these figures models the step time of
larger models on more ranks over 1-100 Gbit/s links (printed as a model: extrapolated,
not measured). Set PTB_DIR if the corpus is not at ../shared/corpora/ptb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PTB_DIR  # noqa: E402

HIDDEN, BATCH, BPTT, WARMUP_STEPS = 200, 20, 35, 3
BUFFER_MB = (0.25, 1, 4, 16, 64)            # sizes of the bare all-reduces timed


def ptb_dir() -> Path:
    return Path(os.environ.get("PTB_DIR", PTB_DIR))


def worker(steps: int, threads: int) -> None:
    """One process of a run (a rank, or the single process): time ``steps`` training steps."""
    import numpy as np

    from rnngen import distributed as dist
    from rnngen.lanes import training
    from rnngen.model import Model, ModelConfig
    from rnngen.optim import clip_scale, global_norm, make_optimizer
    from rnngen.train import Chunks, batchify, prepare_data

    w = dist.world()
    vocab, ids, _ = prepare_data([str(ptb_dir() / "train.txt")], valid_fraction=0, log=lambda m: None)
    data = Chunks(*batchify(ids[:400_000], BATCH), BPTT)
    model = Model.init(ModelConfig(vocab_size=len(vocab), hidden=HIDDEN), seed=1)
    optim = make_optimizer("adam", model.params)
    part = w.part(BATCH)
    state = model.zero_state(part.stop - part.start)
    times = {"compute": [], "allreduce": [], "update": []}
    with training(threads, "full") as lanes:
        for i in range(WARMUP_STEPS + steps):
            x, y = data.chunk(i)
            t0 = time.perf_counter()
            xr, yr = np.ascontiguousarray(x[:, part]), np.ascontiguousarray(y[:, part])
            nll, grads, state = model.loss_and_grads(xr, yr, state, None, lanes, batch=BATCH)
            t1 = time.perf_counter()
            nll, grads, _ = dist.reduce_step(w, nll, grads, x, np.zeros(dist.CONTROLS))
            t2 = time.perf_counter()
            optim.step(model.params, grads, 0.002, clip_scale(global_norm(grads, lanes), 5.0), lanes)
            t3 = time.perf_counter()
            if i >= WARMUP_STEPS:
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                    times[key].append(dt)
    result = {k: float(np.median(v)) for k, v in times.items()}
    dense = sum(v.size for k, v in model.params.items() if k != "embed")
    result.update(ranks=w.size, threads=threads, tokens_per_s=BATCH * BPTT * steps / sum(map(sum, times.values())),
                  dense_values=dense, embed_values=model.params["embed"].size,
                  touched_rows=float(np.mean([np.unique(data.chunk(i)[0]).size for i in range(steps)])))
    if w.size > 1:
        result["bare_allreduce"] = bare_allreduce(w)
    if w.root:
        print(json.dumps(result), flush=True)


def bare_allreduce(w) -> dict:
    """Median seconds of an MPI all-reduce (sum, float32) of each size in BUFFER_MB."""
    import numpy as np

    out = {}
    for mb in BUFFER_MB:
        buffer = np.ones(int(mb * 2**20) // 4, dtype=np.float32)
        laps = []
        for _ in range(10):
            w.comm.Barrier()
            t0 = time.perf_counter()
            w.allreduce(buffer)
            laps.append(time.perf_counter() - t0)
        out[str(mb)] = float(np.median(laps))
    return out


def run(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"bench-mpi: {' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_bytes(vocab: int, hidden: int, touched: float) -> tuple[float, float]:
    """Bytes all-reduced per step for a one-layer LSTM LM (embedding = hidden): with the
    embedding's touched rows only, and with the whole embedding."""
    dense = 4 * (2 * hidden * hidden + hidden) + hidden * vocab + vocab       # LSTM + output layer
    return 4 * (dense + touched * hidden), 4 * (dense + vocab * hidden)


def allreduce_seconds(nbytes: float, ranks: int, gbit: float, latency: float = 20e-6) -> float:
    """A ring all-reduce: 2(p-1)/p of the bytes over each link, 2(p-1) latencies."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes * 8 / (gbit * 1e9) + 2 * (ranks - 1) * latency


def report(single: dict, job: dict) -> None:
    print("\n== measured on this machine (PTB, RNN 200, full softmax 10k, batch 20 x bptt 35, Adam) ==")
    print(f"{'run':22s} {'tok/s':>8s} {'compute ms':>11s} {'all-reduce ms':>14s} {'update ms':>10s}")
    for name, r in (("1 process x 2 threads", single), ("2 ranks x 1 thread", job)):
        print(f"{name:22s} {r['tokens_per_s']:8.0f} {1e3 * r['compute']:11.2f} {1e3 * r['allreduce']:14.2f} "
              f"{1e3 * r['update']:10.2f}")
    sparse = 4 * (job["dense_values"] + job["touched_rows"] * HIDDEN)
    dense = 4 * (job["dense_values"] + job["embed_values"])
    print(f"bytes all-reduced per step: {sparse / 2**20:.2f} MiB (embedding's {job['touched_rows']:.0f} touched "
          f"rows of {job['embed_values'] // HIDDEN}); densely {dense / 2**20:.2f} MiB")
    bare = job["bare_allreduce"]
    laps = ", ".join(f"{mb} MiB {1e3 * s:.2f} ms" for mb, s in bare.items())
    print(f"bare all-reduce, 2 ranks, shared memory: {laps}")
    mib_per_s = (BUFFER_MB[-1] - BUFFER_MB[-2]) / (bare[str(BUFFER_MB[-1])] - bare[str(BUFFER_MB[-2])])
    print(f"  -> {mib_per_s:.0f} MiB/s; reducing the embedding densely would add "
          f"{1e3 * (dense - sparse) / 2**20 / mib_per_s:.2f} ms a step here")
    scaling_model(job)


def scaling_model(job: dict) -> None:
    """Step time against ranks for larger models and slower links: a model, extrapolated."""
    per_token = job["compute"] / (BATCH // 2 * BPTT) + job["update"] / (BATCH * BPTT)
    print("\n== scaling model (EXTRAPOLATED from the figures above, not measured) ==")
    print("compute scales with hidden x vocabulary from the measured 200 x 10k step; ring all-reduce,")
    print("20 us latency per hop; per-rank batch 20 x 35 (weak scaling); embedding rows touched: the measured")
    print("count per rank times the ranks, at most V (an upper bound).")
    for vocab, hidden in ((10_000, 200), (10_000, 650), (100_000, 512), (100_000, 1024)):
        compute = per_token * BATCH * BPTT * (hidden * vocab + 8 * hidden * hidden) / (200 * 10_000 + 8 * 200 * 200)
        _, dense = model_bytes(vocab, hidden, 0)
        print(f"\nV={vocab:,} H={hidden}: compute {1e3 * compute:.0f} ms a step per rank; "
              f"{dense / 2**20:.1f} MiB with the whole embedding")
        print(f"  {'ranks':>5s} {'MiB/step':>8s} " + " ".join(f"{g:>4d} Gbit/s: step, eff" for g in (1, 10, 100)))
        for ranks in (1, 2, 8, 32, 100):
            # The rows the global batch touches: at most its tokens (Zipf makes it fewer).
            sparse, _ = model_bytes(vocab, hidden, min(vocab, job["touched_rows"] * ranks))
            cells = []
            for gbit in (1, 10, 100):
                step = compute + allreduce_seconds(sparse, ranks, gbit)
                cells.append(f"{1e3 * step:9.0f} ms {100 * compute / step:4.0f}%")
            print(f"  {ranks:5d} {sparse / 2**20:8.1f} " + " ".join(f"{c:>22s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.threads)
        return
    if not (ptb_dir() / "train.txt").exists():
        sys.exit(f"bench-mpi: no PTB at {ptb_dir()} (set PTB_DIR)")
    from rnngen.distributed import mpiexec_path

    me = [sys.executable, __file__, "--worker", "--steps", str(args.steps)]
    single = run([*me, "--threads", "2"])
    job = run([mpiexec_path(), "-n", "2", *me, "--threads", "1"])
    report(single, job)


if __name__ == "__main__":
    main()
