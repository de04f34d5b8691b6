"""Memory and tokenising speed on a large corpus: a generated 50M-token corpus must train
within 1.5 GB peak RSS, and preparing it (tokenising, vocabulary, ids) must run at 1M
tokens/s or more.

    .venv/bin/python bench/memory.py                     # what `make bench-memory` runs
    .venv/bin/python bench/memory.py --tokens 5000000 --train-seconds 10

The corpus comes from the project's generator (corpora/generate.py): one sample of
--sample-tokens tokens, written as many times as it takes to reach --tokens (sampling 50M
tokens in Python would take minutes; tokenising a copy costs the same as fresh text).
Each measurement runs in its own process and its peak RSS is that process's own
(wait4): first prepare_data alone, timed, then `rnngen train` for --train-seconds of
training. The training command is printed exactly as run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# rnngen train's defaults, given: with --max-time the options not given are chosen for the budget.
FIXED_OPTIONS = ["--cell", "rnn", "--layers", "1", "--softmax", "full", "--optimizer", "adam", "--lr", "0.002",
                 "--clip", "5", "--bptt", "35", "--epochs", "10", "--decay-after", "0", "--lr-decay", "0.5",
                 "--dropout", "0"]


def write_corpus(path: Path, tokens: int, sample_tokens: int, seed: int) -> int:
    """Write about ``tokens`` generated tokens (the end of each line counted) to ``path``;
    return how many."""
    sys.path.insert(0, str(ROOT / "corpora"))
    import generate

    lines, sample_count = [], 0
    while sample_count < sample_tokens:
        batch = [s for s, _ in generate.generate(10_000, seed + len(lines))]
        lines += batch
        sample_count += generate.count_tokens(batch)
    sample = "".join(line + "\n" for line in lines).encode()
    copies = max(1, round(tokens / sample_count))
    with open(path, "wb") as fh:
        for _ in range(copies):
            fh.write(sample)
    return copies * sample_count


def run_measured(cmd: list[str]) -> tuple[str, str, float, float]:
    """Run ``cmd``; return its stdout, stderr, wall seconds and peak RSS in MB (its own, from
    wait4). Output goes through files: a pipe could fill up while we wait."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{stderr}")
    return stdout, stderr, wall, usage.ru_maxrss / 1024.0


def prepare_child(corpus: str) -> None:
    """In the child: time prepare_data on ``corpus`` and print the numbers as JSON."""
    import resource

    from rnngen.train import prepare_data

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    vocab, train_ids, valid_ids = prepare_data([corpus], log=lambda msg: None)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "train_tokens": int(train_ids.size), "valid_tokens": int(valid_ids.size),
                      "vocab": len(vocab), "memmap": type(train_ids).__name__ == "memmap",
                      "rss_after_imports_mb": rss_before}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000_000, help="corpus size, tokens")
    ap.add_argument("--sample-tokens", type=int, default=5_000_000, help="tokens generated, then repeated")
    ap.add_argument("--train-seconds", type=float, default=60, help="--max-time of the training run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prepare-child", metavar="CORPUS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare_child:
        prepare_child(args.prepare_child)
        return

    with tempfile.TemporaryDirectory(prefix="rnngen-memory-") as tmp:
        corpus = Path(tmp) / "big.txt"
        t0 = time.perf_counter()
        tokens = write_corpus(corpus, args.tokens, args.sample_tokens, args.seed)
        print(f"corpus: {tokens:,} tokens, {corpus.stat().st_size / 1e6:,.0f} MB, copies of a "
              f"{args.sample_tokens / 1e6:g}M-token sample of corpora/generate.py "
              f"(written in {time.perf_counter() - t0:.0f} s)", flush=True)

        prepare_cmd = [sys.executable, str(Path(__file__).resolve()), "--prepare-child", str(corpus)]
        stdout, _, _, prepare_rss = run_measured(prepare_cmd)
        prep = json.loads(stdout)
        prep_tokens = prep["train_tokens"] + prep["valid_tokens"]
        print(f"prepare_data: {prep_tokens:,} tokens in {prep['seconds']:.1f} s, vocabulary {prep['vocab']}, "
              f"ids {'memory-mapped' if prep['memmap'] else 'in RAM'}", flush=True)

        train_cmd = [sys.executable, "-m", "rnngen", "train", str(corpus), "-o", str(Path(tmp) / "model.npz"),
                     "--hidden", "200", *FIXED_OPTIONS, "--max-time", f"{args.train_seconds:g}", "--threads", "1",
                     "--checkpoint-every", "0"]
        _, stderr, train_wall, train_rss = run_measured(train_cmd)
        print("".join(f"  | {line}\n" for line in stderr.splitlines()), end="")

    rows = [("prepare_data (count lines, count tokens + vocabulary, encode)", f"{prep['seconds']:.1f}",
             f"{prep_tokens / prep['seconds']:,.0f}", f"{prepare_rss:,.0f}"),
            (f"rnngen train, {args.train_seconds:g} s of training (whole run)", f"{train_wall:.1f}", "",
             f"{train_rss:,.0f}")]
    print(f"\n{'':64s} {'wall s':>7s} {'tokens/s':>11s} {'peak RSS MB':>12s}")
    for row in rows:
        print(f"{row[0]:64s} {row[1]:>7s} {row[2]:>11s} {row[3]:>12s}")
    print(f"(RSS after importing rnngen's data code: {prep['rss_after_imports_mb']:.0f} MB)")
    print(f"training command: {shlex.join(train_cmd)}")


if __name__ == "__main__":
    main(sys.argv[1:])
