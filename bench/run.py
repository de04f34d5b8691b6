"""Side-by-side benchmark: rnngen against the idiomatic PyTorch CPU peer, on Penn Treebank.

    python bench/run.py                        # what `make bench` runs
    python bench/run.py --threads 2 --configs rnn --train-seconds 30 --repeats 2

For each model config and thread count it runs bench/rnngen_lm.py and bench/torch_lm.py,
each in its own process (own thread settings, own peak RSS), on the same id stream:
PTB train.txt with a 10,000-word vocabulary built by rnngen, valid.txt for scoring. It
also measures the float32 matrix-product peak (bench/peak.py, NumPy and torch, each in its
own process) and rnngen's tokenising speed, prints tables with ratios (rnngen / torch),
and writes everything to bench/results/run-<time>.json.

The machine may be shared: every measurement records how many cores other processes kept
busy meanwhile ("others"), and the load average is printed. Use --repeats to see the noise
(sides alternate their order between repeats; the best run counts in the table, the median
of the runs is shown beside it).
"""

from __future__ import annotations

import argparse
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
    machine_info,
    thread_env,
    train_flops_per_token,
    write_json,
)

CONFIGS = {
    # SGD learning rates at which the model trains: lr 1 (Zaremba's, fine for the LSTM)
    # sends the vanilla RNN's loss above ln(vocabulary) within 100 chunks on both sides.
    "rnn": {"cell": "rnn", "hidden": 200, "layers": 1, "embed": 200, "lr": 0.1, "label": "RNN(tanh) 1x200, embed 200"},
    "lstm": {"cell": "lstm", "hidden": 200, "layers": 2, "embed": 200, "lr": 1.0, "label": "LSTM 2x200, embed 200"},
}
VOCAB_SIZE = 10000


def log(msg: str = "") -> None:
    print(msg, flush=True)


def read_results(path: Path) -> dict:
    """A results JSON written by run.py or paired.py (for --report); if it cannot be read,
    one line on stderr and exit status 1."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench: cannot read {path}: {e}") from None


def ptb_missing(ptb: Path) -> str | None:
    """Why the PTB files in ``ptb`` cannot be used (not there), or None."""
    train_path, valid_path = ptb / "train.txt", ptb / "valid.txt"
    if not train_path.exists() or not valid_path.exists():
        return f"Penn Treebank not found ({train_path} and {valid_path} are needed)"
    return None


def missing_requirement(ptb: Path) -> str | None:
    """Why the side-by-side benchmark cannot run here (no PTB, no torch), or None."""
    missing = ptb_missing(ptb)
    if missing:
        return missing
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch is not installed (pip install -e '.[bench]')"
    return None


def prepare(train_path: Path, valid_path: Path, out: Path) -> dict:
    """Vocabulary and id streams with rnngen (the same ids feed both sides), and the
    tokenising speed of Vocab.build / Vocab.encode_stream on the training text."""
    import numpy as np

    from rnngen.textio import read_lines
    from rnngen.train import prepare_data
    from rnngen.vocab import Vocab

    vocab, train_ids, valid_ids = prepare_data([str(train_path)], valid_path=str(valid_path),
                                               valid_fraction=0, vocab_size=VOCAB_SIZE)
    np.savez(out, train=train_ids, valid=valid_ids, tokens=np.array(vocab.tokens))
    lines = read_lines(str(train_path))
    t0 = time.perf_counter()
    Vocab.build(lines, max_size=VOCAB_SIZE)
    build_s = time.perf_counter() - t0
    encode_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        ids = vocab.encode_stream(lines)
        encode_s.append(time.perf_counter() - t0)
    return {"vocab": len(vocab), "train_tokens": int(train_ids.size), "valid_tokens": int(valid_ids.size),
            "tokenize": {"tokens": int(ids.size), "build_vocab_s": build_s,
                         "build_vocab_tokens_per_s": ids.size / build_s,
                         "encode_stream_s_best": min(encode_s), "encode_stream_tokens_per_s": ids.size / min(encode_s)}}


def run_child(script: str, args: list[str], threads: int, out: Path) -> dict | None:
    """Run a bench script in its own process with every thread pool set to ``threads``."""
    cmd = [sys.executable, str(BENCH_DIR / script), *args, "--json", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"  !! {script} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    data = json.loads(out.read_text())
    data["process_wall_s"] = time.perf_counter() - t0
    return data


def measure_peak(threads: int, quick: bool, tmp: Path) -> dict:
    peak = {}
    for lib in ("numpy", "torch"):
        extra = ["--repeats", "3", "--min-seconds", "0.1"] if quick else []
        res = run_child("peak.py", ["--threads", str(threads), "--lib", lib, *extra], threads,
                        tmp / f"peak-{lib}-{threads}.json")
        if res is not None:
            peak[lib] = res
    return peak


def values(runs: list[dict], path: tuple[str, ...]) -> list[float]:
    """The value at ``path`` (keys into nested dicts) of each repeat that has it."""
    out = []
    for r in runs:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            out.append(v)
    return out


def best(runs: list[dict], path: tuple[str, ...]) -> float | None:
    """The highest value among the repeats (for a rate: the least disturbed run)."""
    vals = values(runs, path)
    return max(vals) if vals else None


def median(runs: list[dict], path: tuple[str, ...]) -> float | None:
    """The median over the repeats: what a typical run gives."""
    vals = values(runs, path)
    return statistics.median(vals) if vals else None


def lowest(runs: list[dict], path: tuple[str, ...]) -> float | None:
    vals = values(runs, path)
    return min(vals) if vals else None


def fmt(v, spec=",.0f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table_rows(cfg: dict, runs: dict, threads: int, peak_gflops: float | None,
               peak_cpu_gflops: float | None = None) -> list[tuple[str, str, str, str]]:
    """(metric, rnngen, torch, rnngen/torch) for one config at one thread count."""
    ours, theirs = runs["rnngen"], runs["torch"]
    V = VOCAB_SIZE
    fpt = train_flops_per_token(cfg["cell"], cfg["hidden"], cfg["layers"], cfg["embed"], V)
    rows = []

    def add(label, path, spec=",.0f", higher_is_better=True, pick=None):
        pick = pick or (best if higher_is_better else lowest)
        a, b = pick(ours, path), pick(theirs, path)
        rows.append((label, fmt(a, spec), fmt(b, spec), ratio(a, b)))
        return a, b

    a, b = add("train tokens/s", ("train", "tokens_per_s"))
    if max(len(ours), len(theirs)) > 1:
        add("train tokens/s, median of the runs", ("train", "tokens_per_s"), pick=median)
    ga = a * fpt / 1e9 if a else None
    gb = b * fpt / 1e9 if b else None

    def pct(g):
        return f"{g:.1f} ({100 * g / peak_gflops:.0f}%)" if g and peak_gflops else fmt(g, ".1f")

    rows.append(("train GFLOP/s (% of peak)", pct(ga), pct(gb), ratio(ga, gb)))
    for side in (ours, theirs):                 # the least disturbed chunk
        for r in side:
            r["train"]["tokens_per_s_fastest_chunk"] = 1e3 * r["train"]["tokens"] / r["train"]["chunks"] \
                / r["train"]["min_chunk_ms"]
    add("train tokens/s, fastest chunk", ("train", "tokens_per_s_fastest_chunk"))
    for side in (ours, theirs):                 # tokens per CPU-second: robust to sharing at 1 thread
        for r in side:
            r["train"]["tokens_per_cpu_s"] = r["train"]["tokens"] / max(r["train"]["cpu"].get("cpu_s", 0), 1e-9)
    add("train tokens per CPU-second", ("train", "tokens_per_cpu_s"))
    if threads == 1 and peak_cpu_gflops:
        ca, cb = best(ours, ("train", "tokens_per_cpu_s")), best(theirs, ("train", "tokens_per_cpu_s"))
        rows.append((f"train GFLOP per CPU-s (% of {peak_cpu_gflops:.0f})",
                     *(f"{c * fpt / 1e9:.1f} ({100 * c * fpt / 1e9 / peak_cpu_gflops:.0f}%)" for c in (ca, cb)),
                     ratio(ca, cb)))
    add("train ms/chunk (median)", ("train", "median_chunk_ms"), ".1f", higher_is_better=False)
    sa, sb = add("score tokens/s (valid, batch 1)", ("score", "tokens_per_s"))
    if max(len(ours), len(theirs)) > 1:
        add("score tokens/s, median of the runs", ("score", "tokens_per_s"), pick=median)
    ffpt = forward_flops_per_token(cfg["cell"], cfg["hidden"], cfg["layers"], cfg["embed"], V)
    rows.append(("score GFLOP/s (% of peak)", *(pct(x * ffpt / 1e9 if x else None) for x in (sa, sb)), ratio(sa, sb)))
    for side in (ours, theirs):
        for r in side:
            if "score" in r:
                r["score"]["tokens_per_cpu_s"] = r["score"]["tokens"] / max(r["score"]["cpu"].get("cpu_s", 0), 1e-9)
    add("score tokens per CPU-second", ("score", "tokens_per_cpu_s"))
    la, lb = add("score tokens/s (valid lines, 64 side by side)", ("score_lines", "tokens_per_s"))
    if la and lb and max(len(ours), len(theirs)) > 1:
        add("score lines tokens/s, median of the runs", ("score_lines", "tokens_per_s"), pick=median)
    for n in ("1", "100"):
        add(f"sample tokens/s, {n} line(s)", ("sample", n, "tokens_per_s"))
    add("peak RSS MB", ("peak_rss_mb",), ",.0f", higher_is_better=False)
    add("RSS after imports MB", ("rss_after_import_mb",), ",.0f", higher_is_better=False)
    oc = [fmt(max(r["train"]["cpu"]["others_cores"] for r in side), ".2f") if side else "-"
          for side in (ours, theirs)]
    rows.append(("others' cores busy during train (max)", oc[0], oc[1], ""))
    nll = [fmt(best(side, ("train", "nll_per_token_last")), ".2f") for side in (ours, theirs)]
    rows.append(("train NLL/token, last chunks (sanity)", nll[0], nll[1], ""))
    return rows


def print_table(title: str, rows) -> None:
    w0 = max(len(r[0]) for r in rows)
    log(f"\n{title}")
    log(f"  {'':{w0}s}  {'rnngen':>16s}  {'torch':>16s}  {'rnngen/torch':>12s}")
    for r in rows:
        log(f"  {r[0]:{w0}s}  {r[1]:>16s}  {r[2]:>16s}  {r[3]:>12s}")


def report(results: dict) -> None:
    """Print the tables of a run (also for a saved JSON: run.py --report FILE)."""
    thread_counts = [int(t) for t in results["peak"]] or sorted(
        {int(t) for c in results["configs"].values() for t in c["threads"]}, reverse=True)
    for t in thread_counts:
        pk = results["peak"].get(str(t), {})
        sq = [res["rows"][0]["gflops"] for res in pk.values()]
        results.setdefault("peak_square_gflops", {})[str(t)] = max(sq) if sq else None
        sq = [res["rows"][0].get("gflops_per_cpu_s", 0) for res in pk.values()]
        results.setdefault("peak_square_gflops_per_cpu_s", {})[str(t)] = max(sq) if sq else None
    for c in results["configs"].values():                          # older files: cpu_s from cores_used
        for runs in c["threads"].values():
            for r in runs["rnngen"] + runs["torch"]:
                for phase in ("train", "score"):
                    cpu = r.get(phase, {}).get("cpu")
                    if cpu is not None and "cpu_s" not in cpu:
                        cpu["cpu_s"] = cpu["cores_used"] * cpu["wall_s"]
    for entry in results["configs"].values():
        cfg = entry["config"]
        for t in thread_counts:
            runs = entry["threads"].get(str(t))
            if not runs or not runs["rnngen"] or not runs["torch"]:
                continue
            peak = results["peak_square_gflops"][str(t)]
            n = max(len(runs["rnngen"]), len(runs["torch"]))
            rep = f", best of {n}" if n > 1 else ""
            print_table(f"{cfg['label']}, vocab {VOCAB_SIZE:,}, batch 20 x bptt 35, {t} thread(s){rep} "
                        f"(peak {fmt(peak, '.0f')} GFLOP/s)",
                        table_rows(cfg, runs, t, peak, results["peak_square_gflops_per_cpu_s"][str(t)]))
        if len(thread_counts) > 1 and 1 in thread_counts:
            rows = []
            for side in ("rnngen", "torch"):
                for metric, path in (("train", ("train", "tokens_per_s")), ("score", ("score", "tokens_per_s")),
                                     ("sample 100", ("sample", "100", "tokens_per_s"))):
                    by_t = {t: best(entry["threads"].get(str(t), {}).get(side, []), path) for t in thread_counts}
                    rows.append((f"{side} {metric}", *(fmt(by_t[t]) for t in thread_counts),
                                 ratio(by_t[max(thread_counts)], by_t[1])))
            log(f"\n{cfg['label']}: thread scaling (tokens/s)")
            log("  " + f"{'':18s}" + "".join(f"{f'{t} thr':>12s}" for t in thread_counts) + f"{'speed-up':>10s}")
            for r in rows:
                log("  " + f"{r[0]:18s}" + "".join(f"{x:>12s}" for x in r[1:-1]) + f"{r[-1]:>10s}")
    tk = results.get("data", {}).get("tokenize")
    if tk:
        log(f"\ntokenising PTB train ({tk['tokens']:,} tokens): Vocab.encode_stream "
            f"{tk['encode_stream_tokens_per_s']:,.0f} tokens/s, "
            f"Vocab.build {tk['build_vocab_tokens_per_s']:,.0f} tokens/s")
    if "loadavg_start" in results:
        log(f"load average: start {' '.join(f'{x:.2f}' for x in results['loadavg_start'])}, "
            f"end {' '.join(f'{x:.2f}' for x in results.get('loadavg_end', ()))}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["rnn", "lstm"], choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts to measure")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side per config and thread count")
    ap.add_argument("--train-seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--score-tokens", type=int, default=0, help="at most this many valid tokens to score (0 = all)")
    ap.add_argument("--score-seconds", type=float, default=10.0,
                    help="score as much of the valid stream as fits in about this time (0 = all of it)")
    ap.add_argument("--sample-seconds", type=float, default=3.0)
    ap.add_argument("--sample-length", type=int, default=50)
    ap.add_argument("--quick-peak", action="store_true", help="fewer peak timings")
    ap.add_argument("--ptb", type=Path, default=PTB_DIR, help="folder with PTB train.txt and valid.txt")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/run-<time>.json)")
    ap.add_argument("--report", type=Path, metavar="JSON", help="only print the tables of a saved run")
    args = ap.parse_args(argv)
    if args.report:
        report(read_results(args.report))
        return 0

    missing = missing_requirement(args.ptb)
    if missing:
        log(f"bench: skipped: {missing}")
        return 0
    train_path, valid_path = args.ptb / "train.txt", args.ptb / "valid.txt"
    from rnngen.cells import CELLS

    configs = []
    for name in args.configs:
        if CONFIGS[name]["cell"] in CELLS:
            configs.append(name)
        else:
            log(f"bench: rnngen has no {CONFIGS[name]['cell']!r} cell yet: config {name!r} skipped")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = RESULTS_DIR / f"tmp-{stamp}"
    tmp.mkdir()
    out = args.out or RESULTS_DIR / f"run-{stamp}.json"

    info = machine_info()
    results = {"machine": info, "loadavg_start": loadavg(), "args": {k: str(v) for k, v in vars(args).items()},
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "configs": {}, "peak": {}}
    log(f"bench: {info['date']}  {info['cpu_model']}, {info['cpus']} CPUs; numpy {info['numpy']}, "
        f"numba {info['numba']}, torch {info['torch']} ({info.get('torch_blas')})")
    log(f"bench: load average at start {' '.join(f'{x:.2f}' for x in loadavg())}")

    data = tmp / "ptb.npz"
    results["data"] = prepare(train_path, valid_path, data)
    tk = results["data"]["tokenize"]
    log(f"bench: PTB {results['data']['train_tokens']:,} train / {results['data']['valid_tokens']:,} valid tokens, "
        f"vocab {results['data']['vocab']:,}; tokenising (Vocab.encode_stream) "
        f"{tk['encode_stream_tokens_per_s']:,.0f} tokens/s, Vocab.build {tk['build_vocab_tokens_per_s']:,.0f} tokens/s")

    for threads in args.threads:
        log(f"bench: peak float32 GEMM at {threads} thread(s) ...")
        results["peak"][str(threads)] = measure_peak(threads, args.quick_peak, tmp)
        for lib, res in results["peak"][str(threads)].items():
            log(f"  {lib:5s} " + ", ".join(f"{r['label'].split()[0]} {r['gflops']:.0f}" for r in res["rows"])
                + f"  GFLOP/s (square: {res['rows'][0]['gflops_per_cpu_s']:.0f} per CPU-second)")

    for name in configs:
        cfg = CONFIGS[name]
        results["configs"][name] = {"config": cfg, "threads": {}}
        for threads in args.threads:
            runs = {"rnngen": [], "torch": []}
            for rep in range(args.repeats):
                order = ("rnngen", "torch") if rep % 2 == 0 else ("torch", "rnngen")
                for side in order:
                    log(f"bench: {name} {threads} thread(s) {side} (run {rep + 1}/{args.repeats}), "
                        f"load {os.getloadavg()[0]:.2f} ...")
                    wargs = ["--data", str(data), "--cell", cfg["cell"], "--hidden", str(cfg["hidden"]),
                             "--layers", str(cfg["layers"]), "--embed", str(cfg["embed"]), "--lr", str(cfg["lr"]),
                             "--threads", str(threads), "--warmup", str(args.warmup),
                             "--train-seconds", str(args.train_seconds), "--score-tokens", str(args.score_tokens),
                             "--score-seconds", str(args.score_seconds),
                             "--sample-seconds", str(args.sample_seconds),
                             "--sample-length", str(args.sample_length)]
                    res = run_child(f"{side}_lm.py", wargs, threads, tmp / f"{name}-{threads}-{side}-{rep}.json")
                    if res is not None:
                        runs[side].append(res)
                        log(f"  train {res['train']['tokens_per_s']:,.0f} tok/s "
                            f"(others {res['train']['cpu']['others_cores']:.2f} cores), "
                            f"score {res.get('score', {}).get('tokens_per_s', 0):,.0f} tok/s, "
                            f"peak RSS {res['peak_rss_mb']:,.0f} MB")
            results["configs"][name]["threads"][str(threads)] = runs

    results["loadavg_end"] = loadavg()
    write_json(out, results)

    report(results)
    write_json(out, results)
    for f in tmp.iterdir():
        if f.suffix == ".npz":
            f.unlink()
    log(f"\nbench: load average at end {' '.join(f'{x:.2f}' for x in results['loadavg_end'])}")
    log(f"bench: results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
