"""rnngen and PyTorch taking turns: the ratio of the two measured a few seconds apart, many times.

    python bench/paired.py                                  # make bench-paired
    python bench/paired.py --configs lstm --phase score --rounds 30 --block-seconds 2

bench/run.py runs each side in a process of its own, one after the other, about a minute
apart; on this shared virtual machine the speed of the cores drifts on that time scale (the
same GEMM read 83 and 125 GFLOP/s per core ten minutes apart), so its ratios move by +-0.15
from run to run. Here both sides start once (bench/rnngen_lm.py and bench/torch_lm.py with
--serve), load the same PTB ids and build the same model, and then take turns: a block of
--block-seconds of training (or scoring) steps on one side, then on the other, in the
order AB BA AB ... Each round gives one ratio rnngen / PyTorch from two blocks a few
seconds apart; the table gives the median ratio over the rounds and its spread.

Results go to bench/results/paired-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
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
from run import CONFIGS, VOCAB_SIZE, prepare

SIDES = ("rnngen", "torch")


def start(side: str, cfg: dict, phase: str, threads: int, data: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(BENCH_DIR / f"{side}_lm.py"), "--data", str(data), "--cell", cfg["cell"],
           "--hidden", str(cfg["hidden"]), "--layers", str(cfg["layers"]), "--embed", str(cfg["embed"]),
           "--lr", str(cfg["lr"]), "--threads", str(threads), "--serve", phase]
    return subprocess.Popen(cmd, env=thread_env(threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)


def block(proc: subprocess.Popen, seconds: float) -> dict:
    """One timed block on a worker: what it did, as it reports it."""
    proc.stdin.write(f"{seconds}\n")
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"bench: a worker stopped (exit code {proc.wait()})")
    return json.loads(line)


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def run_pair(name: str, phase: str, threads: int, rounds: int, seconds: float, data: Path,
             peak: float | None) -> dict:
    cfg = CONFIGS[name]
    procs = {side: start(side, cfg, phase, threads, data) for side in SIDES}
    try:
        for side in SIDES:                                      # warm-up: compile, caches, pools
            block(procs[side], 1.0)
        blocks = {side: [] for side in SIDES}
        for r in range(rounds):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                time.sleep(0.2)                                 # the other side's pools go idle
                blocks[side].append(block(procs[side], seconds))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    rates = {side: [b["tokens_per_s"] for b in blocks[side]] for side in SIDES}
    ratios = [a / b for a, b in zip(rates["rnngen"], rates["torch"])]
    flops = (train_flops_per_token if phase == "train" else forward_flops_per_token)(
        cfg["cell"], cfg["hidden"], cfg["layers"], cfg["embed"], VOCAB_SIZE)
    q1, q3 = quartiles(ratios)
    return {"config": name, "label": cfg["label"], "phase": phase, "threads": threads, "rounds": rounds,
            "block_seconds": seconds, "ratios": ratios, "ratio_median": statistics.median(ratios),
            "ratio_q1": q1, "ratio_q3": q3, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rates": rates, "median_tokens_per_s": {s: statistics.median(v) for s, v in rates.items()},
            "best_tokens_per_s": {s: max(v) for s, v in rates.items()},
            "median_gflops": {s: statistics.median(v) * flops / 1e9 for s, v in rates.items()},
            "peak_gflops": peak, "others_cores_max": max(b["cpu"]["others_cores"] for side in SIDES
                                                        for b in blocks[side])}


def measure_peak(threads: int) -> float | None:
    """The square float32 GEMM of bench/peak.py with NumPy, in its own process."""
    out = RESULTS_DIR / f"paired-peak-{threads}.json"
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "peak.py"), "--threads", str(threads), "--repeats", "3",
                           "--min-seconds", "0.1", "--json", str(out)], env=thread_env(threads),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    rows = json.loads(out.read_text())["rows"]
    out.unlink()
    return rows[0]["gflops"]


def report(results: list[dict]) -> None:
    print(f"\n  {'config':28s} {'phase':6s} {'thr':>3s} {'rounds':>6s}  {'rnngen tok/s':>12s} {'torch tok/s':>12s}"
          f"  {'ratio median':>12s} {'(quartiles)':>13s} {'min..max':>11s}  {'rnngen % of peak':>16s}")
    for r in results:
        pct = (f"{100 * r['median_gflops']['rnngen'] / r['peak_gflops']:.0f}% of {r['peak_gflops']:.0f}"
               if r["peak_gflops"] else "-")
        spread = f"({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})"
        extremes = f"{r['ratio_min']:.2f}..{r['ratio_max']:.2f}"
        print(f"  {r['label']:28s} {r['phase']:6s} {r['threads']:3d} {r['rounds']:6d}  "
              f"{r['median_tokens_per_s']['rnngen']:12,.0f} {r['median_tokens_per_s']['torch']:12,.0f}  "
              f"{r['ratio_median']:11.2f}x {spread:>13s} {extremes:>11s}  {pct:>16s}")


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
        report(json.loads(args.report.read_text())["pairs"])
        return 0
    train_path, valid_path = args.ptb / "train.txt", args.ptb / "valid.txt"
    if not train_path.exists() or not valid_path.exists():
        print(f"bench: skipped: Penn Treebank not found ({train_path} and {valid_path} are needed)")
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench: skipped: PyTorch is not installed (pip install -e '.[bench]')")
        return 0

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    data = RESULTS_DIR / f"paired-{stamp}.npz"
    prepare(train_path, valid_path, data)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"bench: {started}, load average {' '.join(f'{x:.2f}' for x in loadavg())}", flush=True)
    peak_before = measure_peak(args.threads)
    results = []
    try:
        for name in args.configs:
            for phase in args.phase:
                print(f"bench: {name} {phase}, {args.rounds} rounds of {args.block_seconds:g} s each side ...",
                      flush=True)
                results.append(run_pair(name, phase, args.threads, args.rounds, args.block_seconds, data,
                                        peak_before))     # the % of peak printed here: against the peak before
                report(results[-1:])
    finally:
        data.unlink()
    peak_after = measure_peak(args.threads)
    peak = max(peak_before or 0, peak_after or 0) or None
    for r in results:
        r["peak_gflops"] = peak
    print(f"\nbench: square float32 GEMM peak, {args.threads} thread(s): {peak_before or 0:.0f} GFLOP/s before, "
          f"{peak_after or 0:.0f} after; % of peak uses the higher")
    report(results)
    out = RESULTS_DIR / f"paired-{stamp}.json"
    write_json(out, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": started,
                     "peak_before": peak_before, "peak_after": peak_after, "loadavg_end": loadavg(),
                     "pairs": results})
    print(f"bench: results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
