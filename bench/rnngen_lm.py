"""rnngen side of the benchmark: training, scoring and sampling throughput in one process.

    python bench/rnngen_lm.py --data bench/results/ptb.npz --cell rnn --hidden 200 --threads 2

Training takes the steps ``rnngen.train.train`` takes (:func:`rnngen.train.train_step`: loss
and gradients, finite-loss check, global-norm clip, SGD step; state carried: truncated
BPTT), timed per chunk; checkpointing and validation are left out. run.py starts this script in
its own process so that its thread settings and peak RSS are its own.
"""

from __future__ import annotations

import sys

from common import (
    current_rss_mb,
    finish,
    load_data,
    serve_lines,
    serve_scoring,
    set_thread_env,
    timed_line_scoring,
    timed_sampling,
    timed_scoring,
    training_phase,
    valid_lines,
    worker_parser,
)


def main(argv=None) -> dict:
    args = worker_parser(__doc__).parse_args(argv)
    set_thread_env(args.threads)           # before numpy loads OpenBLAS

    import numpy as np

    from rnngen import blas
    from rnngen.cells import CELLS
    from rnngen.lanes import training_lanes
    from rnngen.model import Model, ModelConfig
    from rnngen.optim import SGD
    from rnngen.sample import sample
    from rnngen.score import score_lines, stream_logprob
    from rnngen.train import batchify, time_major, train_step
    from rnngen.vocab import Vocab

    if args.cell not in CELLS:
        raise SystemExit(f"rnngen has no {args.cell!r} cell (has: {', '.join(CELLS)})")
    train_ids, valid_ids, tokens = load_data(args.data)
    vocab = Vocab(unit="word", tokens=tokens)
    result = {"side": "rnngen", "cell": args.cell, "hidden": args.hidden, "layers": args.layers,
              "embed": args.embed or args.hidden, "threads": args.threads, "vocab": len(vocab),
              "products": blas.product_library(),
              "rss_after_import_mb": current_rss_mb()}

    # --- training -------------------------------------------------------------------
    config = ModelConfig(vocab_size=len(vocab), cell=args.cell, hidden=args.hidden, layers=args.layers,
                         embed=args.embed)
    model = Model.init(config, seed=args.seed)
    optim = SGD(model.params)
    inputs, targets = batchify(train_ids, args.batch)
    n_chunks = inputs.shape[1] // args.bptt
    state = model.zero_state(args.batch)
    lanes = training_lanes(args.threads, "full")                       # as `rnngen train` does

    def step(i: int) -> float:
        nonlocal state
        start, stop = i * args.bptt, (i + 1) * args.bptt
        x, y = time_major(inputs, start, stop), time_major(targets, start, stop)
        result = train_step(model, optim, x, y, state, args.lr, args.clip, None, lanes)
        if not result.finite:
            raise SystemExit(f"training diverged at chunk {i}")
        state = result.state
        return result.nll

    if training_phase(args, step, n_chunks, result):
        return None

    # --- scoring: the valid set as one stream, batch 1, forward only ---------------------
    blas.use_threads(args.threads, "score", args.hidden, model.cell.gates)      # as `rnngen score` does
    if args.serve == "score":
        return serve_scoring(lambda ids: stream_logprob(model, ids), valid_ids)
    if args.score_tokens >= 0 and args.serve is None:
        result["score"] = timed_scoring(lambda ids: stream_logprob(model, ids), valid_ids, args.score_tokens,
                                        args.score_seconds)
        result["score"]["chunk"] = "rnngen.score default (256)"

    # --- scoring lines: each valid line alone, 64 side by side (what `rnngen score -` does) --
    if args.score_lines >= 0 or args.serve == "lines":
        lines = valid_lines(valid_ids)[:args.score_lines or None]
        texts = [" ".join(tokens[i] for i in line) for line in lines]        # what `score -` reads
        if args.serve == "lines":
            return serve_lines(lambda part: score_lines(model, vocab, part), texts, lines)
        result["score_lines"] = timed_line_scoring(
            lambda part: sum(r.logprob for r in score_lines(model, vocab, part)), texts,
            sum(len(line) + 1 for line in lines))

    # --- sampling from a freshly initialised model (near-uniform: lines run full length) --
    fresh = Model.init(config, seed=args.seed)
    result["sample"] = {}
    for n in args.sample_n:
        blas.use_threads(args.threads, "sample", args.hidden, model.cell.gates, n)   # as `rnngen sample --n N` does
        sample(fresh, vocab, n=n, max_length=5, seed=0)                    # warm-up
        result["sample"][str(n)] = timed_sampling(
            lambda seed, n=n: sample(fresh, vocab, n=n, max_length=args.sample_length, seed=seed),
            n, args.sample_length, args.sample_seconds)
    result["numpy_dtype"] = str(np.dtype(model.dtype))
    finish(args, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
