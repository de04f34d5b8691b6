"""Where rnngen's training step spends its time: py-spy samples the rnngen worker while it
trains on PTB, and the samples are added up per source line of rnngen (and per function).

    python tools/profile_step.py                          # RNN 1x200, 2 threads, 300 chunks
    python tools/profile_step.py --cell lstm --layers 2 --threads 1

    python tools/profile_step.py --phase score --cell lstm --layers 2 --threads 1

Every sample is charged to the innermost frame inside rnngen/ (NumPy calls, BLAS and the
Numba kernels have no Python frame of their own, so their time lands on the line that calls
them). Samples are taken with --idle so that time a thread spends waiting inside BLAS is
counted too: the percentages are of wall-clock time of the training steps, on the thread
that runs them (the critical path). The lanes' worker thread is not counted: its stacks do
not pass through the step.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))   # the bench harness

from common import BENCH_DIR, PTB_DIR, RESULTS_DIR, ROOT, thread_env, write_json  # noqa: E402
from run import prepare, ptb_missing  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def _in_step(frame: str) -> bool:
    """Is this frame the worker's per-chunk training step() closure?"""
    m = FRAME.match(frame.strip())
    return bool(m) and m["func"].endswith("step") and m["file"].endswith("rnngen_lm.py")


def _in_score(frame: str) -> bool:
    """Is this frame rnngen.score.stream_logprob?"""
    m = FRAME.match(frame.strip())
    return bool(m) and m["func"] == "stream_logprob" and m["file"].endswith("score.py")


def parse_raw(path: Path, phase: str = "train") -> tuple[collections.Counter, collections.Counter, int]:
    """Per-line and per-function sample counts inside the training step; also the total."""
    by_line: collections.Counter = collections.Counter()
    by_func: collections.Counter = collections.Counter()
    total = 0
    for row in path.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # only the timed work: the worker's step() closure (which calls the rnngen API)
        if not any((_in_step if phase == "train" else _in_score)(f) for f in frames):
            continue
        n = int(count)
        total += n
        where = None
        for f in reversed(frames):
            m = FRAME.match(f.strip())
            if m and "/rnngen/" in m["file"].replace("\\", "/"):
                where = (m["file"], int(m["line"]), m["func"])
                break
        if where is None:                                       # in the bench loop itself
            m = FRAME.match(frames[-1].strip())
            where = (m["file"], int(m["line"]), m["func"]) if m else ("?", 0, frames[-1])
        by_line[where] += n
        by_func[(Path(where[0]).name, where[2])] += n
    return by_line, by_func, total


def _snapshot() -> dict[str, list[str]]:
    """The text of every rnngen/*.py, by absolute path, split into lines."""
    return {str(p.resolve()): p.read_text().splitlines() for p in (ROOT / "rnngen").glob("*.py")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="rnn", choices=("rnn", "lstm"))
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phase", choices=("train", "score"), default="train",
                    help="the training step, or scoring the valid stream (batch 1, forward only)")
    ap.add_argument("--chunks", type=int, default=300, help="training chunks to profile")
    ap.add_argument("--score-seconds", type=float, default=15.0, help="scoring time to profile (--phase score)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25, help="lines to print")
    ap.add_argument("--ptb", type=Path, default=PTB_DIR)
    args = ap.parse_args(argv)

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("profile: py-spy not found (pip install py-spy)")
        return 1
    if ptb_missing(args.ptb):
        print(f"profile: skipped: {ptb_missing(args.ptb)}")
        return 0

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = RESULTS_DIR / "profile-ptb.npz"
    prepare(args.ptb / "train.txt", args.ptb / "valid.txt", data)
    tag = f"{args.cell}{args.layers}x{args.hidden}-{args.threads}t" + ("-score" if args.phase == "score" else "")
    if args.phase == "train":
        work = ["--max-chunks", str(args.chunks), "--score-tokens", "-1"]
    else:
        work = ["--warmup", "0", "--max-chunks", "1", "--score-seconds", str(args.score_seconds)]
    raw, res_json = RESULTS_DIR / f"profile-{tag}.txt", RESULTS_DIR / f"profile-{tag}-worker.json"
    cmd = [py_spy, "record", "-f", "raw", "--idle", "--full-filenames", "--rate", str(args.rate), "-o", str(raw), "--",
           sys.executable, str(BENCH_DIR / "rnngen_lm.py"), "--data", str(data), "--cell", args.cell,
           "--hidden", str(args.hidden), "--layers", str(args.layers), "--threads", str(args.threads),
           *work, "--sample-n", "--json", str(res_json)]
    print("profile:", " ".join(cmd), flush=True)
    sources = _snapshot()                                # others may edit rnngen/ meanwhile
    subprocess.run(cmd, env=thread_env(args.threads), check=True, capture_output=True)
    if _snapshot() != sources:
        print("profile: warning: rnngen/ sources changed during the run; line texts may be off")
    data.unlink()

    by_line, by_func, total = parse_raw(raw, args.phase)
    import json

    worker = json.loads(res_json.read_text())
    if args.phase == "train":
        tr = worker["train"]
        print(f"\nrnngen {args.cell} {args.layers}x{args.hidden}, {args.threads} thread(s), {tr['chunks']} chunks "
              f"under py-spy: {tr['tokens_per_s']:,.0f} tokens/s, median {tr['median_chunk_ms']:.1f} ms/chunk; "
              f"{total} samples in the training step")
    else:
        sc = worker["score"]
        print(f"\nrnngen {args.cell} {args.layers}x{args.hidden}, {args.threads} thread(s), scoring {sc['tokens']:,} "
              f"valid tokens under py-spy: {sc['tokens_per_s']:,.0f} tokens/s; {total} samples in stream_logprob")
    print(f"\n  {'%':>5s}  {'where':28s}  source")
    rows = []
    for (file, line, func), n in by_line.most_common():
        lines = sources.get(str(Path(file).resolve()), [])
        src = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        rel = Path(file).resolve()
        rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
        rows.append({"pct": 100 * n / total, "file": str(rel), "line": line, "func": func, "source": src})
    for r in rows[:args.top]:
        print(f"  {r['pct']:5.1f}  {r['file'] + ':' + str(r['line']):28s}  {r['source'][:80]}")
    print(f"\n  {'%':>5s}  function")
    funcs = [{"pct": 100 * n / total, "file": f, "func": fn} for (f, fn), n in by_func.most_common()]
    for r in funcs[:15]:
        print(f"  {r['pct']:5.1f}  {r['file']}:{r['func']}")
    write_json(RESULTS_DIR / f"profile-{tag}.json", {"args": vars(args) | {"ptb": str(args.ptb)}, "worker": worker,
                                                     "samples": total, "lines": rows, "functions": funcs})
    print(f"\nprofile: raw samples in {raw}, summary in {RESULTS_DIR / f'profile-{tag}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
