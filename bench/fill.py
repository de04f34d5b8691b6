"""Fill-in-the-blank quality and speed on Penn Treebank (``make bench-fill``).

Trains a forward language model and a bidirectional (cloze) model of the same cell and size
for the same time (``--train-seconds`` each), blanks one word in each of a fixed seeded
sample of valid sentences (every position of a line equally likely, ``<eos>`` never) and
reports, for three ways of guessing the blank, top-1 and top-5 accuracy, the cloze
perplexity exp(mean -ln p(true word)) and the time per line:

    left      the forward model's prediction from the left context alone: p(w | left)
    exact     exact fill with the forward model: p(w | left, right) ∝ p(left w right)
    cloze     the bidirectional model's output at the blank

Exact fill scores every word of the vocabulary through the right context, so it is by far
the slowest: ``--exact-lines`` limits it to the first N lines of the sample, and the table
also gives the other two methods on that same subset. Then ``fill`` throughput (lines/s,
``rnngen.fill_lines`` in this process, warm) for 1 and 100 lines with both models.

Candidates are the whole vocabulary but ``<eos>``; PTB's ``<unk>`` is a word of its text,
so it is a candidate too (``allow_unk``). Skips (exit 0) when PTB is absent.

    python bench/fill.py --train-seconds 120 --exact-lines 50      # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PTB_DIR, ROOT, set_thread_env

# rnngen train's defaults, given: with --max-time the options not given are chosen for the budget.
FIXED_OPTIONS = ["--layers", "1", "--optimizer", "adam", "--lr", "0.002", "--clip", "5", "--bptt", "35",
                 "--decay-after", "0", "--lr-decay", "0.5", "--dropout", "0"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptb", type=Path, default=PTB_DIR, help="folder with train.txt and valid.txt")
    ap.add_argument("--train-seconds", type=float, default=600.0, help="training time of each model")
    ap.add_argument("--lines", type=int, default=300, help="valid sentences in the sample")
    ap.add_argument("--exact-lines", type=int, default=300, help="of which exact fill does the first N")
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--softmax", default="class", help="class keeps exact fill's vocabulary-wide pass affordable")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample (models: --seed 1)")
    ap.add_argument("--models", type=Path, default=None, help="folder for the two checkpoints (default: temporary); "
                                                               "existing ones are reused")
    return ap.parse_args()


def train(args, path: Path, bidirectional: bool) -> None:
    if path.exists():
        print(f"bench-fill: reusing {path}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "rnngen", "train", str(args.ptb / "train.txt"), "--valid", str(args.ptb / "valid.txt"),
           "--cell", args.cell, "--hidden", str(args.hidden), "--softmax", args.softmax, "--epochs", "1000",
           *FIXED_OPTIONS, "--max-time", str(args.train_seconds), "--threads", str(args.threads), "--seed", "1",
           "-o", str(path)]
    if bidirectional:
        cmd.append("--bidirectional")
    print("bench-fill: " + " ".join(cmd[2:]), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)


def sample_blanks(vocab, path: Path, n: int, seed: int):
    """(left ids, true id, right ids) for n seeded valid lines, one uniformly chosen position each."""
    import numpy as np

    lines = [line for line in path.read_text().splitlines() if line.split()]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(lines), size=min(n, len(lines)), replace=False)
    out = []
    for i in picked:
        ids = vocab.encode_line(lines[i])[0]
        t = int(rng.integers(len(ids)))
        out.append((ids[:t], int(ids[t]), ids[t + 1:]))
    return out


def evaluate(name: str, score_fn, blanks, allowed) -> dict:
    """Accuracy, cloze perplexity and seconds per line of ``score_fn(left, right)`` (scores over ``allowed``)."""
    import numpy as np

    position = {int(w): j for j, w in enumerate(allowed)}
    top1 = top5 = 0
    nll = 0.0
    t0 = time.perf_counter()
    for left, true, right in blanks:
        scores = np.asarray(score_fn(left, right), dtype=np.float64)
        logp = scores - np.logaddexp.reduce(scores)
        j = position[true]
        rank = int((logp > logp[j]).sum())
        top1 += rank == 0
        top5 += rank < 5
        nll -= logp[j]
    seconds = time.perf_counter() - t0
    n = len(blanks)
    return {"method": name, "lines": n, "top1": top1 / n, "top5": top5 / n, "cloze_ppl": math.exp(nll / n),
            "s_per_line": seconds / n}


def throughput(model, vocab, blanks, n: int) -> float:
    """Lines per second of fill_lines on ``n`` lines (warm: a first call compiles)."""
    from rnngen.fill import fill_lines

    lines = [" ".join([vocab.decode(left), "___", vocab.decode(right)]).strip() for left, _, right in blanks[:n]]
    fill_lines(model, vocab, lines[:1], allow_unk=True)
    t0 = time.perf_counter()
    fill_lines(model, vocab, lines, allow_unk=True)
    return len(lines) / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args()
    if not (args.ptb / "train.txt").exists() or not (args.ptb / "valid.txt").exists():
        print(f"bench-fill: skipped: no Penn Treebank at {args.ptb} (give --ptb DIR)", file=sys.stderr)
        return
    set_thread_env(args.threads)
    folder = args.models or Path(tempfile.mkdtemp(prefix="rnngen-bench-fill-"))
    folder.mkdir(parents=True, exist_ok=True)
    fw_path, bi_path = folder / "forward.npz", folder / "bidirectional.npz"
    train(args, fw_path, False)
    train(args, bi_path, True)
    report(args, fw_path, bi_path)


def report(args, fw_path: Path, bi_path: Path) -> None:
    from rnngen.checkpoint import load
    from rnngen.fill import allowed_ids, cloze_scores, exact_scores, left_scores

    fw, bi = load(str(fw_path), False), load(str(bi_path), False)
    vocab = fw.vocab
    allowed = allowed_ids(vocab, allow_unk=True)
    blanks = sample_blanks(vocab, args.ptb / "valid.txt", args.lines, args.seed)
    methods = {
        "left": lambda left, right: left_scores(fw.model, left, vocab.eos)[0][allowed],
        "cloze": lambda left, right: cloze_scores(bi.model, [(left, right)], allowed, vocab.unk)[0],
        "exact": lambda left, right: exact_scores(fw.model, left, right, allowed, vocab.eos),
    }
    subset = blanks[:args.exact_lines]
    rows = [evaluate(name, methods[name], blanks, allowed) for name in ("left", "cloze")]
    rows += [{**evaluate(name, methods[name], subset, allowed), "subset": True} for name in ("left", "cloze", "exact")]
    # Exact fill's cost grows with the lines: the forward model's batch is capped at --exact-lines.
    speed = {f"{kind} {m} lines": throughput(model, vocab, blanks, m)
             for kind, model, cap in (("forward", fw.model, args.exact_lines), ("bidirectional", bi.model, 100))
             for m in sorted({min(n, max(cap, 1), len(blanks)) for n in (1, 100)})}
    result = {"train_seconds": args.train_seconds, "cell": args.cell, "hidden": args.hidden, "softmax": args.softmax,
              "threads": args.threads, "sample_seed": args.seed, "vocab": len(vocab),
              "valid_ppl": {"forward": fw.history[-1]["valid_ppl"] if fw.history else None,
                            "bidirectional (cloze)": bi.history[-1]["valid_ppl"] if bi.history else None},
              "methods": rows, "fill_lines_per_s": speed}
    print(json.dumps(result))
    print(f"\n{args.cell} {args.hidden}, {args.softmax} softmax, {args.train_seconds:g} s of training each, "
          f"{args.threads} thread(s); sample seed {args.seed}", file=sys.stderr)
    print("| method | lines | top-1 | top-5 | cloze ppl | s/line |\n|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['method']}{' (subset)' if r.get('subset') else ''} | {r['lines']} | {100 * r['top1']:.1f}% | "
              f"{100 * r['top5']:.1f}% | {r['cloze_ppl']:.1f} | {r['s_per_line']:.4f} |", file=sys.stderr)
    for k, v in speed.items():
        print(f"fill throughput, {k}: {v:.2f} lines/s", file=sys.stderr)


if __name__ == "__main__":
    main()
