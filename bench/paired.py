"""rnngen and PyTorch taking turns: the ratio of the two measured a few seconds apart, many times.

    python bench/paired.py                                  # make bench-paired
    python bench/paired.py --configs lstm --phase score --rounds 30 --block-seconds 2

bench/run.py runs each side in a process of its own, one after the other, about a minute
apart; on this shared virtual machine the speed of the cores drifts on that time scale (the
same GEMM read 83 and 125 GFLOP/s per core ten minutes apart), so its ratios move by +-0.15
from run to run. Here both sides start once (bench/rnngen_lm.py and bench/torch_lm.py with
--serve), load the same PTB ids and build the same model, and then take turns: a block of
--block-seconds of training (or scoring) steps on one side, then on the other, in the
order AB BA AB ... Between the two blocks of a round, bench/peak.py (also started once, one
process per library) times the 2048 square float32 product with NumPy and with torch for 1 s
each: the round's peak. Each round gives one ratio rnngen / PyTorch and each side's share
of the peak, from blocks a few seconds apart; the table gives their medians over the rounds
and the spread of the ratio.

Results go to bench/results/paired-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    BENCH_DIR,
    PTB_DIR,
    RESULTS_DIR,
    forward_flops_per_token,
    loadavg,
    thread_env,
    train_flops_per_token,
    write_json,
)
from run import CONFIGS, VOCAB_SIZE, missing_requirement, prepare, read_results

from rnngen import blas

PEAK_LIBS = ("numpy", "torch")
OTHER = {"openblas": "mkl", "mkl": "openblas"}


def sides(chosen: str) -> dict[str, tuple[str, dict]]:
    """The sides taking turns: name -> (worker script's side, extra environment). rnngen with
    the BLAS it chose, PyTorch, and (when MKL is installed) rnngen forced onto the other BLAS."""
    out = {"rnngen": ("rnngen", {}), "torch": ("torch", {})}
    if blas.mkl_installed():
        out["rnngen-other"] = ("rnngen", {"RNNGEN_BLAS": OTHER[chosen]})
    return out


def start(cmd: list[str], threads: int, tree: Path | None = None, env_extra: dict | None = None) -> subprocess.Popen:
    """``python cmd`` with every thread count set to ``threads``; with ``tree`` (a checkout
    of the repository), importing that tree's rnngen."""
    env = {**thread_env(threads), **(env_extra or {})}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, *cmd], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)


def start_side(side: str, cfg: dict, phase: str, threads: int, data: Path,
               tree: Path | None = None, env_extra: dict | None = None) -> subprocess.Popen:
    """A --serve worker of ``side`` (rnngen or torch); ``tree``: another checkout to run it from."""
    bench = BENCH_DIR if tree is None else tree / "bench"
    return start([str(bench / f"{side}_lm.py"), "--data", str(data), "--cell", cfg["cell"],
                  "--hidden", str(cfg["hidden"]), "--layers", str(cfg["layers"]), "--embed", str(cfg["embed"]),
                  "--lr", str(cfg["lr"]), "--threads", str(threads), "--serve", phase], threads, tree, env_extra)


def start_peak(lib: str, threads: int) -> subprocess.Popen:
    """bench/peak.py timing the 2048 square float32 product with ``lib`` on request."""
    return start([str(BENCH_DIR / "peak.py"), "--lib", lib, "--threads", str(threads), "--serve"], threads)


def block(proc: subprocess.Popen, seconds: float) -> dict:
    """One timed block on a worker: what it did, as it reports it."""
    time.sleep(0.2)                                             # the previous worker's pools go idle
    try:
        proc.stdin.write(f"{seconds}\n")
        line = proc.stdout.readline()
    except BrokenPipeError:                                     # it had stopped before the request
        line = ""
    if not line:
        raise SystemExit(f"bench: a worker stopped (exit code {proc.wait()})")
    return json.loads(line)


def stop(procs) -> None:
    """End the workers' input and wait for them (those that stopped already included)."""
    for proc in procs:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.wait()


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def spread(values: list[float]) -> dict:
    q1, q3 = quartiles(values)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def run_pair(name: str, phase: str, threads: int, rounds: int, seconds: float, data: Path, peaks: dict,
             chosen: str) -> dict:
    """``rounds`` rounds of: each side's block in turn, with the square product on each
    library (1 s each) after the first; the sides' order rotates. Per round: the ratio of
    rnngen to each other side, and each side's GFLOP/s as a share of the round's peak (the
    faster library)."""
    cfg, named = CONFIGS[name], sides(chosen)
    procs = {side: start_side(script, cfg, phase, threads, data, env_extra=env)
             for side, (script, env) in named.items()}
    order = list(named)
    try:
        for side in order:                                      # warm-up: compile, caches, pools
            block(procs[side], 1.0)
        blocks = {side: [] for side in order}
        peak = []
        for r in range(rounds):
            turn = order[r % len(order):] + order[:r % len(order)]
            turn = turn if r % 2 == 0 else turn[::-1]
            blocks[turn[0]].append(block(procs[turn[0]], seconds))
            peak.append(max(block(peaks[lib], 1.0)["rate"] for lib in PEAK_LIBS) / 1e9)
            for side in turn[1:]:
                blocks[side].append(block(procs[side], seconds))
    finally:
        stop(procs.values())
    rates = {side: [b["rate"] for b in blocks[side]] for side in order}
    flops = (train_flops_per_token if phase == "train" else forward_flops_per_token)(
        cfg["cell"], cfg["hidden"], cfg["layers"], cfg["embed"], VOCAB_SIZE)
    return {"config": name, "label": cfg["label"], "phase": phase, "threads": threads, "rounds": rounds,
            "block_seconds": seconds, "tokens_per_s": rates, "peak_gflops": peak,
            "ratio": spread([a / b for a, b in zip(rates["rnngen"], rates["torch"])]),
            "blas": {"chosen": chosen, "other": OTHER[chosen]},
            "ratio_to_other_blas": (spread([a / b for a, b in zip(rates["rnngen"], rates["rnngen-other"])])
                                    if "rnngen-other" in rates else None),
            "median_tokens_per_s": {side: statistics.median(v) for side, v in rates.items()},
            "share_of_peak": {side: spread([rate * flops / 1e9 / p for rate, p in zip(v, peak)])
                              for side, v in rates.items()},
            "others_cores_max": max(b["cpu"]["others_cores"] for side in order for b in blocks[side])}


def report(results: list[dict]) -> None:
    print(f"\n  {'config':28s} {'phase':6s} {'thr':>3s} {'rounds':>6s}  {'rnngen tok/s':>12s} {'torch tok/s':>12s}"
          f"  {'ratio median':>12s} {'(quartiles)':>13s} {'min..max':>11s}  {'% of peak: rnngen':>17s} {'torch':>5s}"
          f"  {'other BLAS tok/s':>16s} {'chosen/other':>12s} {'(quartiles)':>13s}")
    for r in results:
        ratio, share = r["ratio"], r["share_of_peak"]
        quarts = f"({ratio['q1']:.2f}-{ratio['q3']:.2f})"
        extremes = f"{ratio['min']:.2f}..{ratio['max']:.2f}"
        other, tokens = r.get("ratio_to_other_blas"), r["median_tokens_per_s"]
        versus = (f"  {tokens['rnngen-other']:16,.0f} {other['median']:11.2f}x "
                  f"{'(' + format(other['q1'], '.2f') + '-' + format(other['q3'], '.2f') + ')':>13s}"
                  f"  [{r['blas']['chosen']} vs {r['blas']['other']}]") if other else ""
        print(f"  {r['label']:28s} {r['phase']:6s} {r['threads']:3d} {r['rounds']:6d}  "
              f"{tokens['rnngen']:12,.0f} {tokens['torch']:12,.0f}  "
              f"{ratio['median']:11.2f}x {quarts:>13s} {extremes:>11s}  "
              f"{100 * share['rnngen']['median']:16.0f}% {100 * share['torch']['median']:4.0f}%{versus}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["rnn", "lstm"], choices=sorted(CONFIGS))
    ap.add_argument("--phase", nargs="+", default=["train", "score", "lines"], choices=("train", "score", "lines"),
                    help="training steps; scoring the valid stream (2,048-token pieces, batch 1); scoring"
                         " valid lines (256 at a time, as `rnngen score -` does)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="turns of each side per config and phase")
    ap.add_argument("--block-seconds", type=float, default=2.0, help="length of one side's turn")
    ap.add_argument("--ptb", type=Path, default=PTB_DIR, help="folder with PTB train.txt and valid.txt")
    ap.add_argument("--report", type=Path, metavar="JSON", help="only print the table of a saved run")
    args = ap.parse_args(argv)
    if args.report:
        report(read_results(args.report)["pairs"])
        return 0
    missing = missing_requirement(args.ptb)
    if missing:
        print(f"bench: skipped: {missing}")
        return 0
    train_path, valid_path = args.ptb / "train.txt", args.ptb / "valid.txt"

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    data = RESULTS_DIR / f"paired-{stamp}.npz"
    prepare(train_path, valid_path, data)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    choice = blas.chosen()
    products = choice.library
    print(f"bench: {started}, load average {' '.join(f'{x:.2f}' for x in loadavg())}, rnngen's "
          f"{choice.describe()}", flush=True)
    peaks = {lib: start_peak(lib, args.threads) for lib in PEAK_LIBS}
    results = []
    try:
        for lib in PEAK_LIBS:
            block(peaks[lib], 1.0)                                  # warm-up
        for name in args.configs:
            for phase in args.phase:
                print(f"bench: {name} {phase}, {args.rounds} rounds of {args.block_seconds:g} s each side ...",
                      flush=True)
                results.append(run_pair(name, phase, args.threads, args.rounds, args.block_seconds, data, peaks,
                                        products))
                report(results[-1:])
    finally:
        stop(peaks.values())
        data.unlink()
    print(f"\nbench: {args.threads} thread(s); % of peak: the median over the rounds of each side's GFLOP/s over the"
          " round's square-product peak (the faster of NumPy and torch)")
    report(results)
    out = RESULTS_DIR / f"paired-{stamp}.json"
    write_json(out, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": started,
                     "rnngen_products": products, "blas_choice": choice.describe(), "loadavg_end": loadavg(),
                     "pairs": results})
    print(f"bench: results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
