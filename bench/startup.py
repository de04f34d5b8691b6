"""Start-up: wall time of whole `rnngen` commands, each a new process, caches warm.

    python bench/startup.py            # make bench-startup

Models: the PTB-sized RNN-200 of the main benchmark (10,000 words, untrained weights: load
and scoring time do not depend on them) and a 2x650 LSTM of the same vocabulary. Each
command runs once untimed (fills Numba's cache and the page cache), then --runs times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PTB_DIR, RESULTS_DIR, write_json

RNNGEN = [sys.executable, "-m", "rnngen"]


def make_model(path: Path, lines: list[str], cell: str, layers: int, hidden: int) -> None:
    from rnngen.checkpoint import Checkpoint, save
    from rnngen.model import Model, ModelConfig
    from rnngen.vocab import Vocab

    vocab = Vocab.build(lines, max_size=10_000)
    model = Model.init(ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=hidden), seed=0)
    save(str(path), Checkpoint(model, vocab))


def timed(cmd: list[str], runs: int, cwd: Path) -> dict:
    walls = []
    for i in range(runs + 1):                       # the first run is untimed: it fills the caches
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"startup: {' '.join(cmd[len(RNNGEN) - 1:])} failed ({proc.returncode}): {last}")
        if i:
            walls.append(time.perf_counter() - start)
    return {"command": " ".join(["rnngen", *cmd[len(RNNGEN):]]), "walls": walls,
            "median": statistics.median(walls), "min": min(walls), "max": max(walls)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ptb", type=Path, default=PTB_DIR)
    args = ap.parse_args(argv)
    train = args.ptb / "train.txt"
    if not train.exists():
        print(f"startup: {train} not found", file=sys.stderr)
        return 1
    lines = train.read_text().splitlines()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "lines.txt").write_text("\n".join(lines[:200]) + "\n")
        make_model(cwd / "rnn.npz", lines, "rnn", 1, 200)
        make_model(cwd / "lstm.npz", lines, "lstm", 2, 650)
        commands = [RNNGEN + ["--help"], RNNGEN + ["score", "--help"]]
        for m in ("rnn.npz", "lstm.npz"):
            commands += [RNNGEN + ["score", "-m", m, "a b c"],
                         RNNGEN + ["score", "-m", m, "the company said it expects to report a loss"],
                         RNNGEN + ["score", "-m", m, "--stream", "lines.txt"]]
        for cmd in commands:
            row = timed(cmd, args.runs, cwd)
            rows.append(row)
            print(f"{row['command']:72s} median {row['median']:.2f} s  (min {row['min']:.2f}, "
                  f"max {row['max']:.2f}, {args.runs} runs)", flush=True)
    out = RESULTS_DIR / f"startup-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    write_json(out, {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows})
    print(f"startup: results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
