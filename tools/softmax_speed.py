"""Training throughput of the output layers (full, class-factored, hierarchical), each
against its arithmetic bound, then in whole training steps.

    python tools/softmax_speed.py [--ptb ../shared/corpora/ptb] [--hidden 200] [--chunks 30]
                                  [--threads 2] [--layers class] [--old-class] [--direct-order 4]

One process, the same PTB id stream (the first 700 = 20 x 35 targets a step). With
--threads N each layer's step uses N threads as training does
(:func:`rnngen.lanes.training_lanes`: lanes, or NumPy's BLAS on N threads).

1. The output layer alone: ``output.loss_grad`` on random top-layer states with PTB's
   targets, then the gradient norm and an SGD update of the layer's weights. Next to each
   layer's tokens/s its bound: the multiply-adds a token needs (forward, dh and dW: 3 per
   weight used) at the machine's single-thread float32 GEMM rate (a large sgemm, timed here):

       full   3·H·V
       class  3·H·(C + E[class size])    E over PTB's tokens: frequent words sit in small classes
       hs     3·H·E[path length]         E over PTB's tokens, in the Huffman tree

2. Whole training steps (:func:`rnngen.train.train_step`: loss and gradients, clipping, SGD
   update) of a vanilla RNN with each layer.

With --direct-order K each layer also runs with hashed n-gram features of order K
("class+ng", ...: rnngen.maxent, the corpus's default hash size). Their bound counts the
hashed weights a token reads and updates: 2 (K-1) per word (or class, or node) the layer
scores, as adds at the same GEMM rate (they are memory-bound, so this is optimistic).

The layers' steps alternate chunk by chunk, so a busy machine slows them alike. Prints
tokens/s (median and best chunk). --old-class adds "class-old", the class softmax's step
before issue 19's rework (tools/class_softmax_old.py, serial with BLAS on N threads), and
the per-chunk ratio class / class-old with its quartiles.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from class_softmax_old import OldClassSoftmax

from rnngen import blas
from rnngen.lanes import SERIAL, training_lanes
from rnngen.model import Model, ModelConfig
from rnngen.optim import SGD, global_norm
from rnngen.train import batchify, prepare_data, time_major, train_step

LAYERS = ("full", "class", "hs")
OLD = "class-old"
NGRAM = "+ng"                                    # the suffix of a layer with n-gram features
ROWS = 700                                       # 20 streams x 35 steps


def gemm_rate(n: int = 2048, repeats: int = 3) -> float:
    """Multiply-adds per second of one float32 (n x n) @ (n x n) product, best of ``repeats``."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)                                       # warm-up
    best = min(_timed(np.matmul, a, a, out) for _ in range(repeats))
    return n ** 3 / best


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def madds_per_token(model: Model, counts: np.ndarray, ngrams: bool = True) -> tuple[float, str]:
    """(multiply-adds per token of the layer's training step, how they were counted)."""
    cfg, p = model.config, counts / counts.sum()
    H, V = cfg.hidden, cfg.vocab_size
    if cfg.direct_order and ngrams:               # the layer's own, plus 2 (K-1) adds per logit it scores
        madds, how = madds_per_token(model, counts, ngrams=False)
        per_logit = 2 * (cfg.direct_order - 1)
        return madds * (1 + per_logit / (3 * H)), f"{how}, x (1 + {per_logit}/3H)"
    if cfg.softmax == "class":
        bounds = np.asarray(cfg.class_bounds)
        size = np.repeat(np.diff(bounds), np.diff(bounds))         # each word's class size
        expected = float(p @ size)
        return 3 * H * (len(bounds) - 1 + expected), f"3H(C + {expected:.0f}), C = {len(bounds) - 1}"
    if cfg.softmax == "hs":
        path = model.output.mean_path(counts)
        return 3 * H * path, f"3H x {path:.2f} nodes"
    return 3 * H * V, "3HV"


def lanes_for(kind: str, threads: int):
    """The lanes a training step of ``kind`` runs on (setting NumPy's BLAS threads to match);
    the old class softmax's: serial, BLAS on every thread."""
    if threads > 1:
        time.sleep(0.2)                 # the previous step's BLAS threads stop spinning (bench/paired.py)
    if kind == OLD:
        blas.set_threads(threads)
        return SERIAL
    return training_lanes(threads, kind)


def model_of(kind: str, cfg: ModelConfig) -> Model:
    model = Model.init(cfg, seed=0)
    if kind == OLD:
        model.output = OldClassSoftmax(cfg)
    return model


def layer_alone(models: dict, ids: np.ndarray, hidden: int, chunks: int, threads: int) -> dict:
    """Seconds per step of each layer's loss_grad + norm + SGD, alternating, after 2 warm-ups."""
    rng = np.random.default_rng(1)
    times = {k: [] for k in models}
    for i in range(chunks + 2):
        top = np.tanh(rng.standard_normal((ROWS, hidden))).astype(np.float32)
        targets = ids[i * ROWS:(i + 1) * ROWS].astype(np.int64)
        inputs = np.concatenate(([0], ids[i * ROWS:(i + 1) * ROWS - 1])).astype(np.int32)[:, None]
        for k, (model, params, optim) in models.items():
            lanes = lanes_for(k, threads)
            bases = model.contexts(inputs)
            t0 = time.perf_counter()
            with lanes:
                _, _, grads = model.output.loss_grad(params, top, targets, 1 / 20, lanes,
                                                     None if bases is None else bases.reshape(ROWS, -1))
                hashed = grads.pop("direct", None)
                optim.step(params, grads, 0.1, min(1.0, 5.0 / global_norm(grads, lanes)), lanes)
                if hashed is not None:
                    hashed.sgd(params["direct"], 2.0)
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    return times


def whole_steps(runs: dict, inputs, targets, chunks: int, threads: int) -> dict:
    times = {k: [] for k in runs}
    for i in range(chunks + 2):
        x, y = time_major(inputs, i * 35, (i + 1) * 35), time_major(targets, i * 35, (i + 1) * 35)
        for k, run in runs.items():
            lanes = lanes_for(k, threads)
            before = time_major(inputs, max(0, i * 35 - 2), i * 35) if run["model"].history else None
            t0 = time.perf_counter()
            run["state"] = train_step(run["model"], run["optim"], x, y, run["state"], 1.0, 5.0, None, lanes,
                                      before=before, direct_lr=0.1).state
            if i >= 2:                                  # the first chunks compile and warm up
                times[k].append(time.perf_counter() - t0)
    return times


def rates(times: list) -> tuple[float, float]:
    return ROWS / statistics.median(times), ROWS / min(times)


def old_new(times: dict) -> str:
    """The per-chunk tokens/s ratio class / class-old: median (quartiles), or "" without --old-class."""
    if OLD not in times or "class" not in times:
        return ""
    q1, med, q3 = np.percentile(np.array(times[OLD]) / np.array(times["class"]), [25, 50, 75])
    return f"class / class-old per chunk: {med:.2f}x (quartiles {q1:.2f}-{q3:.2f})"


def main(argv=None) -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptb", default=str(root.parent / "shared" / "corpora" / "ptb"))
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gemm", type=int, default=2048, help="size of the timed sgemm")
    ap.add_argument("--layers", default=",".join(LAYERS), help="which of full,class,hs (comma-separated)")
    ap.add_argument("--old-class", action="store_true", help="also time the class softmax before its rework")
    ap.add_argument("--direct-order", type=int, default=0, help="also time each layer with n-gram features")
    args = ap.parse_args(argv)
    layers = [k for k in args.layers.split(",") if k in LAYERS]
    layers += [k + NGRAM for k in layers] if args.direct_order else []
    layers += [OLD] if args.old_class else []
    train_txt = Path(args.ptb) / "train.txt"
    if not train_txt.exists():
        print(f"softmax_speed: {train_txt} not found; skipped")
        return 0
    blas.set_threads(args.threads)
    vocab, ids, _ = prepare_data([str(train_txt)], valid_fraction=0)
    counts = np.bincount(ids, minlength=len(vocab)).astype(np.float64)
    chunks = min(args.chunks, len(ids) // ROWS - 3)
    configs = {k: ModelConfig(vocab_size=len(vocab), hidden=args.hidden,
                              direct_order=args.direct_order * k.endswith(NGRAM),
                              softmax=k.removesuffix("-old").removesuffix(NGRAM)) for k in layers}
    configs = {k: cfg.with_classes(counts).with_tree(counts).with_direct_size(len(ids)) for k, cfg in configs.items()}
    blas.set_threads(1)
    rate = gemm_rate(args.gemm)
    models = {}
    for k, cfg in configs.items():
        model = model_of(k, cfg)
        params = {n: v for n, v in model.params.items() if n in cfg.output_shapes()}
        models[k] = (model, params, SGD(params))
    alone = layer_alone(models, ids, args.hidden, chunks, args.threads)
    print(f"PTB, V = {len(vocab):,}, H = {args.hidden}, {ROWS} rows a step, {args.threads} thread(s), "
          f"{chunks} steps each; sgemm {args.gemm} (1 thread): {rate / 1e9:.1f} G multiply-adds/s")
    print("output layer alone (loss_grad + norm + SGD):")
    print(f"{'softmax':9s} {'tokens/s (median)':>17s} {'(best)':>12s} {'bound':>12s} {'of bound':>9s}  "
          "multiply-adds/token")
    for k, times in alone.items():
        med, best = rates(times)
        madds, how = madds_per_token(models[k][0], counts)
        bound = rate / madds
        print(f"{k:9s} {med:17,.0f} {best:12,.0f} {bound:12,.0f} {med / bound:8.0%}  {madds:,.0f} = {how}")
    print(old_new(alone))
    inputs, targets = batchify(ids, 20)
    runs = {}
    for k, cfg in configs.items():
        model = model_of(k, cfg)
        runs[k] = {"model": model, "optim": SGD(model.params), "state": model.zero_state(20)}
    whole = whole_steps(runs, inputs, targets, min(chunks, inputs.shape[1] // 35 - 3), args.threads)
    print(f"whole training steps, vanilla RNN hidden {args.hidden}, batch 20 x bptt 35:")
    first = next(iter(whole))
    print(f"{'softmax':9s} {'tokens/s (median)':>17s} {'(best)':>12s} {'/ ' + first:>9s}")
    for k, times in whole.items():
        med, best = rates(times)
        print(f"{k:9s} {med:17,.0f} {best:12,.0f} {med / rates(whole[first])[0]:8.2f}x")
    print(old_new(whole))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
