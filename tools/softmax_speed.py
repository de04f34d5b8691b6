"""Training throughput of the full against the class-factored softmax, side by side.

    python tools/softmax_speed.py [--ptb ../shared/corpora/ptb] [--hidden 200] [--chunks 30]

One process, the same PTB id stream and model size; the two models' training steps
(:func:`rnngen.train.train_step`: loss and gradients, clipping, SGD update) are
timed alternately, chunk by chunk, so a busy machine slows both alike. Prints tokens/s
(median and best chunk) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from rnngen import blas
from rnngen.model import Model, ModelConfig
from rnngen.optim import SGD
from rnngen.train import batchify, prepare_data, time_major, train_step


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptb", default=str(root.parent / "shared" / "corpora" / "ptb"))
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    train_txt = Path(args.ptb) / "train.txt"
    if not train_txt.exists():
        print(f"softmax_speed: {train_txt} not found; skipped")
        return
    blas.set_threads(args.threads)
    vocab, ids, _ = prepare_data([str(train_txt)], valid_fraction=0)
    counts = np.bincount(ids, minlength=len(vocab))
    inputs, targets = batchify(ids, 20)
    runs = {}
    for softmax in ("full", "class"):
        cfg = ModelConfig(vocab_size=len(vocab), hidden=args.hidden, softmax=softmax).with_classes(counts)
        model = Model.init(cfg, seed=0)
        runs[softmax] = {"model": model, "optim": SGD(model.params), "state": model.zero_state(20), "times": []}
    for i in range(args.chunks + 2):
        x, y = time_major(inputs, i * 35, (i + 1) * 35), time_major(targets, i * 35, (i + 1) * 35)
        for run in runs.values():
            t0 = time.perf_counter()
            run["state"] = train_step(run["model"], run["optim"], x, y, run["state"], 1.0, 5.0).state
            if i >= 2:                                  # the first chunks compile and warm up
                run["times"].append(time.perf_counter() - t0)
    rate = {k: (700 / statistics.median(r["times"]), 700 / min(r["times"])) for k, r in runs.items()}
    print(f"PTB, vanilla RNN hidden {args.hidden}, batch 20 x bptt 35, {args.threads} BLAS thread(s), "
          f"{args.chunks} chunks each, {len(runs['class']['model'].output.bounds) - 1} classes")
    print(f"{'softmax':8s} {'tokens/s (median)':>18s} {'tokens/s (best)':>16s}")
    for k, (med, best) in rate.items():
        print(f"{k:8s} {med:18,.0f} {best:16,.0f}")
    print(f"class / full: {rate['class'][0] / rate['full'][0]:.2f}x (median), "
          f"{rate['class'][1] / rate['full'][1]:.2f}x (best)")


if __name__ == "__main__":
    main()
