"""Two versions of rnngen taking turns: is a change faster, on this noisy machine?

    git worktree add /tmp/old HEAD~1
    python tools/ab.py /tmp/old . --config lstm --phase train --rounds 12

Each tree's bench/rnngen_lm.py starts once with --serve (its own process, the tree first on
PYTHONPATH, so that it imports that tree's rnngen), and the two take turns in blocks of
--block-seconds, in the order AB BA AB ... on the same PTB ids. Prints each side's median
tokens/s and the median, quartiles and extremes of the per-round ratio new / old: blocks a
few seconds apart see about the same machine, processes a minute apart do not
(bench/paired.py explains). The figures quoted as "A/B" in BENCHMARKS.md come from this.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))   # the bench harness

from common import PTB_DIR  # noqa: E402
from paired import block, spread, start_side, stop  # noqa: E402
from run import CONFIGS, prepare, ptb_missing  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="the tree (a checkout of the repository) to compare against")
    ap.add_argument("new", type=Path, help="the tree with the change")
    ap.add_argument("--config", default="rnn", choices=sorted(CONFIGS))
    ap.add_argument("--phase", default="train", choices=("train", "score", "lines"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block-seconds", type=float, default=3.0)
    ap.add_argument("--ptb", type=Path, default=PTB_DIR, help="folder with PTB train.txt and valid.txt")
    args = ap.parse_args(argv)
    for tree in (args.old, args.new):
        if not (tree / "rnngen" / "__init__.py").exists() or not (tree / "bench" / "rnngen_lm.py").exists():
            print(f"ab: {tree} is not an rnngen checkout (no rnngen/ and bench/rnngen_lm.py)")
            return 1
    if ptb_missing(args.ptb):
        print(f"ab: skipped: {ptb_missing(args.ptb)}")
        return 0
    cfg = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ids.npz"
        prepare(args.ptb / "train.txt", args.ptb / "valid.txt", data)
        procs = {side: start_side("rnngen", cfg, args.phase, args.threads, data, tree.resolve())
                 for side, tree in (("old", args.old), ("new", args.new))}
        rates: dict[str, list[float]] = {"old": [], "new": []}
        try:
            for proc in procs.values():
                block(proc, 1.0)                                # warm-up: kernels loaded, pools started
            for r in range(args.rounds):
                for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    rates[side].append(block(procs[side], args.block_seconds)["rate"])
        finally:
            stop(procs.values())                                # also when one of them failed
    ratios = spread([new / old for old, new in zip(rates["old"], rates["new"])])
    print(f"{cfg['label']}, {args.phase}, {args.threads} thread(s), {args.rounds} rounds of {args.block_seconds:g} s: "
          f"old {statistics.median(rates['old']):,.0f}, new {statistics.median(rates['new']):,.0f} tokens/s; "
          f"new / old median {ratios['median']:.3f}x (quartiles {ratios['q1']:.3f}-{ratios['q3']:.3f}, "
          f"{ratios['min']:.3f}..{ratios['max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
