"""This machine's float32 matrix-product speed: a large square SGEMM (the practical peak)
and the shapes the language models actually multiply.

    python bench/peak.py --threads 2                  # NumPy (its OpenBLAS)
    python bench/peak.py --threads 2 --lib torch      # PyTorch (MKL), in its own process
    python bench/peak.py --threads 1 --json out.json
    python bench/peak.py --threads 2 --serve          # blocks of the square product on request (paired.py)

Each product is timed ``--repeats`` times after one warm-up call; the best time counts
(the least disturbed by other processes). GFLOP/s = 2 m k n / time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import blas_pools, serve, set_thread_env, write_json


def model_shapes(batch: int, bptt: int, hidden: int, vocab: int, score_chunk: int) -> list[tuple[str, int, int, int]]:
    """(label, m, k, n) of the products in one training step and in scoring/sampling."""
    n = batch * bptt
    return [
        ("square 2048", 2048, 2048, 2048),
        (f"logits  {n}x{hidden} @ {hidden}x{vocab}", n, hidden, vocab),
        (f"dV      {hidden}x{n} @ {n}x{vocab}", hidden, n, vocab),
        (f"dh      {n}x{vocab} @ {vocab}x{hidden}", n, vocab, hidden),
        (f"input   {n}x{hidden} @ {hidden}x{4 * hidden}", n, hidden, 4 * hidden),
        (f"recur   {batch}x{hidden} @ {hidden}x{hidden}", batch, hidden, hidden),
        (f"score   {score_chunk}x{hidden} @ {hidden}x{vocab}", score_chunk, hidden, vocab),
        (f"sample  100x{hidden} @ {hidden}x{vocab}", 100, hidden, vocab),
        (f"sample  1x{hidden} @ {hidden}x{vocab}", 1, hidden, vocab),
    ]


def _time_best(fn, repeats: int, min_seconds: float) -> tuple[float, float]:
    """Best per-call wall seconds and best per-call CPU seconds (this process, all its
    threads) over ``repeats`` timings, each long enough to time reliably. With one thread
    the CPU figure is what the core does while it runs us, even when others share it."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_seconds / once))
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        best_wall = min(best_wall, (time.perf_counter() - t0) / inner)
        best_cpu = min(best_cpu, (time.process_time() - c0) / inner)
    return best_wall, best_cpu


def product(lib: str, m: int, k: int, n: int, rng):
    """A function doing one float32 (m x k) @ (k x n) product with ``lib`` ("numpy" or
    "torch") on random matrices made once."""
    import numpy as np

    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    if lib == "torch":
        import torch

        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        return lambda: torch.mm(ta, tb, out=tc)
    return lambda: np.matmul(a, b, out=c)


def measure(shapes, repeats: int, min_seconds: float, lib: str) -> list[dict]:
    """GFLOP/s of ``lib`` for each (label, m, k, n)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n in shapes:
        wall, cpu = _time_best(product(lib, m, k, n, rng), repeats, min_seconds)
        flops = 2.0 * m * k * n
        rows.append({"label": label, "m": m, "k": k, "n": n, "gflops": flops / wall / 1e9,
                     "gflops_per_cpu_s": flops / max(cpu, 1e-9) / 1e9})
    return rows


def serve_square(lib: str, size: int = 2048) -> None:
    """Paired mode: blocks of the square product on request (see common.serve); the work
    counted is FLOPs."""
    import numpy as np

    square = product(lib, size, size, size, np.random.default_rng(0))
    square()

    def call() -> float:
        square()
        return 2.0 * size ** 3

    serve(call)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timings per shape; the best counts")
    ap.add_argument("--min-seconds", type=float, default=0.2, help="minimum length of one timing")
    ap.add_argument("--lib", choices=("numpy", "torch"), default="numpy",
                    help="which library multiplies (one per process: their thread pools disturb each other)")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--score-chunk", type=int, default=256)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--serve", action="store_true",
                    help="time blocks of the 2048 square product on request (bench/paired.py drives it)")
    args = ap.parse_args(argv)

    set_thread_env(args.threads)
    if args.lib == "torch":
        import torch

        torch.set_num_threads(args.threads)
    if args.serve:
        serve_square(args.lib)
        return {}
    shapes = model_shapes(args.batch, args.bptt, args.hidden, args.vocab, args.score_chunk)
    rows = measure(shapes, args.repeats, args.min_seconds, args.lib)
    result = {"lib": args.lib, "threads": args.threads, "rows": rows, "blas": blas_pools()}
    print(f"float32 matrix products with {args.lib}, {args.threads} thread(s), best of {args.repeats}:")
    print(f"  {'':42s} {'GFLOP/s':>8s} {'per CPU-s':>10s}")
    for r in rows:
        print(f"  {r['label']:42s} {r['gflops']:8.1f} {r['gflops_per_cpu_s']:10.1f}")
    if args.json:
        write_json(Path(args.json), result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
