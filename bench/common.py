"""Helpers shared by the benchmark scripts: thread settings, FLOP counts, machine facts,
and CPU/memory meters.

Nothing here imports NumPy or PyTorch at module level: the thread-count environment
variables must be set before either library loads its BLAS / OpenMP runtime.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PTB_DIR = ROOT.parent / "shared" / "corpora" / "ptb"

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def set_thread_env(threads: int) -> None:
    """Pin every threading runtime to ``threads``; call before importing numpy/torch.

    rnngen.kernels then drops SciPy's OpenBLAS (the copy Numba calls) to 1 thread on import,
    exactly as it does for a user; NumPy's OpenBLAS keeps ``threads``.
    """
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def thread_env(threads: int) -> dict[str, str]:
    """A copy of os.environ with every threading runtime set to ``threads`` (for a child)."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def blas_pools() -> list[dict]:
    """What threadpoolctl sees: each BLAS/OpenMP library, its thread count and kernel."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "prefix", "num_threads", "architecture", "version", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


# --- FLOP counts ---------------------------------------------------------------------

def gates(cell: str) -> int:
    return {"rnn": 1, "gru": 3, "lstm": 4}[cell]


def train_flops_per_token(cell: str, hidden: int, layers: int, embed: int, vocab: int) -> float:
    """Matrix-product FLOPs of one training token (forward + backward, 2 per multiply-add).

    Output layer: forward h V, backward dV = h^T dlogits and dh = dlogits V^T -> 3 x 2 H V.
    Each layer: input and recurrent products, each forward + 2 backward -> 6 (n_in G H + H G H).
    Softmax, non-linearities, the embedding scatter and the optimiser are not counted.
    """
    g = gates(cell)
    total = 6.0 * hidden * vocab
    n_in = embed
    for _ in range(layers):
        total += 6.0 * (n_in * g * hidden + hidden * g * hidden)
        n_in = hidden
    return total


def forward_flops_per_token(cell: str, hidden: int, layers: int, embed: int, vocab: int) -> float:
    """Forward-only matrix-product FLOPs per token (scoring, sampling): a third of training."""
    return train_flops_per_token(cell, hidden, layers, embed, vocab) / 3.0


# --- meters --------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _system_cpu_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)     # idle + iowait
    total = sum(fields[:8])                                          # guest time is already in user
    return (total - idle) / hz, total / hz


class CpuMeter:
    """Wall time, this process's CPU time, and the whole machine's busy CPU time over a span.

    ``others_cores`` = cores kept busy by other processes meanwhile: the noise indicator.
    """

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.self0 = time.process_time()
        self.sys0 = _system_cpu_busy_seconds()[0]
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.self_cpu = time.process_time() - self.self0
        self.sys_cpu = _system_cpu_busy_seconds()[0] - self.sys0
        self.load1 = os.getloadavg()[0]

    def summary(self) -> dict:
        w = max(self.wall, 1e-9)
        return {"wall_s": self.wall, "cpu_s": self.self_cpu, "cores_used": self.self_cpu / w,
                "others_cores": max(0.0, (self.sys_cpu - self.self_cpu) / w),
                "load1_before": self.load0, "load1_after": self.load1}


# --- machine facts -------------------------------------------------------------------

def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    """CPU model, cores, memory, library versions and BLAS backends (imports numpy; call in
    a process whose thread count no longer matters, e.g. the driver)."""
    lscpu = {}
    for line in _run(["lscpu"]).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_model": lscpu.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor", ""),
        "caches": {k: lscpu[k] for k in ("L1d cache", "L2 cache", "L3 cache") if k in lscpu},
        "avx512": "avx512f" in lscpu.get("Flags", ""),
        "python": sys.version.split()[0],
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
    }
    try:
        import psutil

        info["mem_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for name in ("numpy", "scipy", "numba", "torch"):
        try:
            mod = __import__(name)
            info[name] = mod.__version__
        except ImportError:
            info[name] = None
    info["blas"] = blas_pools()
    try:
        import torch

        cfg = torch.__config__.show()
        info["torch_blas"] = next((p.split("=", 1)[1] for p in cfg.replace(",", " ").split()
                                   if p.startswith("BLAS_INFO=")), None)
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    return info


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# --- the two workers' shared command line and protocol --------------------------------

def worker_parser(description: str):
    """Arguments understood by both bench/rnngen_lm.py and bench/torch_lm.py."""
    import argparse

    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True,
                    help="npz with train/valid id arrays and the vocabulary (run.py writes it)")
    ap.add_argument("--cell", default="rnn", choices=("rnn", "lstm"))
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--embed", type=int, default=0, help="0 = same as hidden")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=3, help="training chunks run before timing starts")
    ap.add_argument("--train-seconds", type=float, default=20.0, help="timed training, after warm-up")
    ap.add_argument("--max-chunks", type=int, default=0,
                    help="stop timed training after this many chunks (0 = time only)")
    ap.add_argument("--score-tokens", type=int, default=0,
                    help="score at most this many valid tokens (0 = all); -1 skips scoring")
    ap.add_argument("--score-seconds", type=float, default=10.0,
                    help="score only as much of the valid stream as fits in about this time (0 = no limit)")
    ap.add_argument("--score-chunk", type=int, default=256, help="time steps per forward call when scoring")
    ap.add_argument("--score-lines", type=int, default=0,
                    help="score this many valid lines one by one, 64 side by side (0 = all; -1 = skip)")
    ap.add_argument("--sample-n", type=int, nargs="*", default=[1, 100], help="lines generated side by side")
    ap.add_argument("--sample-length", type=int, default=50, help="max tokens per generated line")
    ap.add_argument("--sample-seconds", type=float, default=4.0, help="repeat sampling calls for this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here (else printed)")
    ap.add_argument("--serve", choices=("train", "score", "lines"),
                    help="run timed blocks of this phase on request instead (bench/paired.py drives it)")
    return ap


def load_data(path: str):
    """(train ids, valid ids, vocabulary tokens) from the npz that run.py writes."""
    import numpy as np

    with np.load(path) as z:
        return z["train"].astype(np.int32), z["valid"].astype(np.int32), [str(t) for t in z["tokens"]]


def serve_training(step, n_chunks_available: int, warmup: int, tokens_per_chunk: int) -> None:
    """Paired mode, training: one training step per call, on chunk after chunk (after
    ``warmup`` untimed steps)."""
    i = 0

    def call() -> int:
        nonlocal i
        step(i % n_chunks_available)
        i += 1
        return tokens_per_chunk

    for _ in range(warmup):
        call()
    serve(call)


def training_phase(args, step, n_chunks_available: int, result: dict) -> bool:
    """A worker's training phase: served block by block with ``--serve train`` (returns True:
    the worker is done), else timed once into ``result["train"]``; skipped for the other
    ``--serve`` phases."""
    tokens_per_chunk = args.batch * args.bptt
    if args.serve == "train":
        serve_training(step, n_chunks_available, args.warmup, tokens_per_chunk)
        return True
    if args.serve is None:
        result["train"] = timed_training(step, n_chunks_available, args.warmup, args.train_seconds,
                                         args.max_chunks, tokens_per_chunk)
        result["train"]["rss_mb"] = current_rss_mb()
    return False


def timed_training(step, n_chunks_available: int, warmup: int, seconds: float, max_chunks: int,
                   tokens_per_chunk: int) -> dict:
    """Run ``step(i)`` (one optimiser step on chunk i; returns the chunk's summed NLL) for
    ``warmup`` chunks untimed, then until ``seconds`` or ``max_chunks``; returns the numbers."""
    import statistics

    losses = []
    i = 0
    for _ in range(warmup):
        losses.append(step(i % n_chunks_available))
        i += 1
    times = []
    with CpuMeter() as meter:
        while True:
            t0 = time.perf_counter()
            losses.append(step(i % n_chunks_available))
            times.append(time.perf_counter() - t0)
            i += 1
            if (max_chunks and len(times) >= max_chunks) or (not max_chunks and sum(times) >= seconds):
                break
    total = sum(times)
    return {"chunks": len(times), "tokens": len(times) * tokens_per_chunk, "seconds": total,
            "tokens_per_s": len(times) * tokens_per_chunk / total,
            "median_chunk_ms": 1e3 * statistics.median(times), "min_chunk_ms": 1e3 * min(times),
            "tokens_per_s_median_chunk": tokens_per_chunk / statistics.median(times),
            "nll_per_token_first": losses[0] / tokens_per_chunk,
            "nll_per_token_last": statistics.fmean(losses[-10:]) / tokens_per_chunk,
            "cpu": meter.summary()}


def timed_scoring(stream_logprob, valid_ids, max_tokens: int, seconds: float) -> dict:
    """Score a prefix of the valid stream with ``stream_logprob(ids) -> (logprob, n)``.

    A timed warm-up on the first 1,000 tokens estimates the rate; the measured run then
    scores as many tokens as fit in ``seconds`` (all of them if they fit), from the start.
    """
    import math

    ids = valid_ids[:max_tokens] if max_tokens else valid_ids
    t0 = time.perf_counter()
    stream_logprob(ids[:1000])
    rate = min(1000, len(ids)) / (time.perf_counter() - t0)
    if seconds:
        ids = ids[:max(2000, int(rate * seconds))]
    with CpuMeter() as meter:
        logprob, n = stream_logprob(ids)
    return {"tokens": n, "of_valid": len(valid_ids), "seconds": meter.wall, "tokens_per_s": n / meter.wall,
            "ppl": math.exp(-logprob / n), "cpu": meter.summary()}


def valid_lines(valid_ids) -> list:
    """The valid stream cut at its end-of-line tokens (id 0): one id array per line."""
    import numpy as np

    ends = np.flatnonzero(valid_ids == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [valid_ids[a:b] for a, b in zip(starts, ends)]


def timed_line_scoring(score_lines, lines: list, tokens: int) -> dict:
    """Score every line on its own (zero state, end-of-line predicted) with
    ``score_lines(lines) -> total logprob``; ``tokens`` counts each line's end-of-line too."""
    import math

    score_lines(lines[:64])                                     # warm-up
    with CpuMeter() as meter:
        logprob = score_lines(lines)
    return {"lines": len(lines), "tokens": tokens, "seconds": meter.wall, "tokens_per_s": tokens / meter.wall,
            "ppl": math.exp(-logprob / tokens), "cpu": meter.summary()}


def timed_sampling(call, n: int, length: int, seconds: float) -> dict:
    """Repeat ``call(seed)`` (returns the generated lines) for about ``seconds``; tokens are
    the generated ones, each line's ``<eos>`` included, at most ``length`` per line."""
    calls, tokens, total = 0, 0, 0.0
    with CpuMeter() as meter:
        while calls == 0 or total < seconds:
            t0 = time.perf_counter()
            lines = call(calls)
            total += time.perf_counter() - t0
            tokens += sum(min(len(line.split()) + 1, length) for line in lines)
            calls += 1
    return {"n": n, "calls": calls, "tokens": tokens, "seconds": total, "tokens_per_s": tokens / total,
            "ms_per_call": 1e3 * total / calls, "cpu": meter.summary()}


def serve(call) -> None:
    """Paired mode (bench/paired.py): for each line ``SECONDS`` read from stdin, repeat
    ``call()`` (returns the work it did: tokens, or FLOPs for peak.py) for about that long
    and answer with one JSON line of what was done; stop at end of input. The process keeps
    its model, data and threads between blocks, so the sides take turns every few seconds
    and drift in the machine's speed hits all of them."""
    for line in sys.stdin:
        seconds, calls, done, total = float(line), 0, 0.0, 0.0
        with CpuMeter() as meter:
            while calls == 0 or total < seconds:
                t0 = time.perf_counter()
                done += call()
                total += time.perf_counter() - t0
                calls += 1
        print(json.dumps({"calls": calls, "done": done, "seconds": total, "rate": done / total,
                          "cpu": meter.summary()}), flush=True)


def serve_pieces(work, pieces: list, tokens: list[int]) -> None:
    """:func:`serve` with ``work(piece)`` on each piece in turn (round and round); ``tokens[i]``
    is what piece i counts for."""
    turn = iter(())

    def call() -> int:
        nonlocal turn
        i = next(turn, None)
        if i is None:
            turn = iter(range(len(pieces)))
            i = next(turn)
        work(pieces[i])
        return tokens[i]

    serve(call)


def serve_scoring(stream_logprob, valid_ids, tokens_per_call: int = 2048) -> None:
    """Paired mode, scoring: ``stream_logprob(ids)`` on consecutive 2,048-token pieces of the
    valid stream, each from the zero state."""
    starts = range(0, max(1, len(valid_ids) - tokens_per_call + 1), tokens_per_call)   # a short stream: one piece
    pieces = [valid_ids[a:a + tokens_per_call] for a in starts]
    serve_pieces(stream_logprob, pieces, [len(piece) for piece in pieces])


def serve_lines(score_lines, lines: list, ids: list, per_call: int = 256) -> None:
    """Paired mode, lines: ``score_lines(lines[a:b])`` on consecutive groups of 256 valid lines
    (``ids``: each line's token ids, for the count: its tokens and its end-of-line)."""
    groups = range(0, len(lines), per_call)
    serve_pieces(score_lines, [lines[a:a + per_call] for a in groups],
                 [sum(len(line) + 1 for line in ids[a:a + per_call]) for a in groups])


def finish(args, result: dict) -> None:
    result["peak_rss_mb"] = peak_rss_mb()
    result["blas"] = blas_pools()
    if args.json:
        write_json(Path(args.json), result)
    else:
        print(json.dumps(result, indent=2, default=str))
