"""Time to perplexity: valid perplexity against wall time, rnngen beside faster-rnnlm.

    python bench/time_to_ppl.py                          # what `make bench-ttp` runs (PTB, about 70 min)
    python bench/time_to_ppl.py --budgets 1,5            # `make bench-ttp-quick` (about 10 min)
    python bench/time_to_ppl.py --corpus shakespeare --budgets 0.25
    python bench/time_to_ppl.py --best '5=--cell lstm --hidden 300'   # an extra "best configuration" row
    python bench/time_to_ppl.py --report bench/results/ttp-ptb-STAMP.json   # table and picture again

Sides, one after the other, each free to use every core:

* **rnngen defaults**: for each budget B (minutes), ``rnngen train TRAIN --valid VALID --max-time
  <B in seconds> --output OUT --log-file LOG`` and nothing else: the options rnngen picks for
  that budget. The whole command is timed from outside; its value is ``rnngen score --stream
  VALID --model OUT`` (run afterwards, outside the budget); its curve comes from the metrics
  log (``valid_ppl`` records, placed by their ``time`` relative to the command's start).
* **rnngen best configuration**: the same command with the extra options of ``BEST`` (below)
  or ``--best``, for the budgets that have some.
* **faster-rnnlm** (``../shared/anchors/faster-rnnlm/rnnlm``, run from there): each setting of
  ``PEER_SETTINGS`` once, to its own stop or killed at the largest budget; each epoch's
  validation is timestamped by wall clock from launch. Its value at B is the best valid
  perplexity among the epochs validated within B, over all settings. It skips the valid lines
  that hold a word unseen in train; when there are such lines, rnngen's models are also
  scored on the others, and the ratio uses that score.

Before the timed runs the Numba cache is warmed: for each budget, the options rnngen would
choose (``rnngen train ... --dry-run`` prints ``options: ...``; without --dry-run, the
defaults) are run on the first lines of the corpus for a few steps and the model scored.
The first-ever compile time is that warm-up with an empty ``NUMBA_CACHE_DIR``, minus the
same warm-up again on the now-filled folder.

Prints a markdown table, the compile time, machine and versions; writes the results as
JSON (``bench/results/``) and a picture (``docs/ttp-<corpus>.png``). Skips (exit 0) when
the corpus or the faster-rnnlm binary is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import selectors
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import RESULTS_DIR, ROOT, write_json

BUDGETS = (1.0, 2.0, 5.0, 15.0, 30.0)          # minutes
SHARED = ROOT.parent / "shared"
CORPORA = ("ptb", "shakespeare")               # ../shared/corpora/NAME/{train,valid}.txt, word level

# "rnngen best configuration": explicit extra training options per budget (minutes), e.g.
#   BEST = {5.0: ["--cell", "lstm", "--hidden", "300", "--softmax", "class"]}
# Budgets without an entry have no such row. --best B=OPTIONS adds to (or replaces) these.
BEST: dict[float, list[str]] = {}

PEER_COMMON = ["--threads", "2", "--seed", "1"]
# (name, options, smallest largest-budget in minutes for which it runs)
PEER_SETTINGS = (
    ("rnnme-200", ["--hidden", "200", "--hidden-type", "sigmoid", "--direct", "100", "--direct-order", "4"], 0.0),
    ("rnn-200", ["--hidden", "200", "--hidden-type", "sigmoid"], 0.0),
    ("rnnme-400", ["--hidden", "400", "--hidden-type", "sigmoid", "--direct", "400", "--direct-order", "4"], 15.0),
)

WARM_LINES = 2000          # lines of the corpus the warm-up trains on
WARM_VALID_LINES = 200
WARM_STEPS = 3


# --- parsing ---------------------------------------------------------------------------

def parse_options_line(stdout: str) -> list[str] | None:
    """The options after ``options: `` on the first line that starts with it (``--dry-run``'s
    answer), split as a shell would; None when there is no such line."""
    for line in stdout.splitlines():
        if line.startswith("options:"):
            return shlex.split(line[len("options:"):])
    return None


_ENTROPY = re.compile(r"(Initial )?entropy \(bits\) valid:\s*([-+0-9.eE]+|nan|-?inf)")


class PeerLog:
    """faster-rnnlm's output read as it arrives: progress lines end in ``\\r``, each epoch's
    validation is ``entropy (bits) valid:  7.21762`` (perplexity 2 ** bits) on a line ending
    in ``\\n``. ``feed(text, t)`` takes the text read at wall time ``t`` (seconds from launch);
    every validation completed in it is stamped ``t``."""

    def __init__(self):
        self.pending = ""
        self.text: list[str] = []
        self.initial: dict | None = None
        self.epochs: list[dict] = []

    def feed(self, text: str, t: float) -> None:
        self.text.append(text)
        self.pending += text
        *segments, self.pending = re.split(r"[\r\n]", self.pending)
        for segment in segments:
            self._segment(segment, t)

    def close(self, t: float) -> None:
        """End of output: a last segment without its line end still counts."""
        if self.pending:
            self._segment(self.pending, t)
            self.pending = ""

    def _segment(self, segment: str, t: float) -> None:
        m = _ENTROPY.search(segment)
        if not m:
            return
        bits = float(m.group(2))
        note = segment[m.end():].split("elapsed:", 1)[-1].split(None, 1)[1:]      # after "elapsed: 4.4s+0.3s"
        point = {"wall_s": t, "bits": bits, "valid_ppl": 2.0 ** bits if math.isfinite(bits) else math.inf,
                 "note": note[0].strip() if note else ""}
        if m.group(1):
            self.initial = point
        else:
            point["epoch"] = len(self.epochs) + 1
            self.epochs.append(point)

    def output(self) -> str:
        return "".join(self.text)


def peer_value_at(settings: list[dict], seconds: float) -> dict | None:
    """faster-rnnlm's value at a budget: the lowest valid perplexity among the epochs whose
    validation finished within ``seconds`` of their run's launch, over all settings;
    ``{"valid_ppl", "wall_s", "epoch", "setting"}`` or None when no epoch finished in time."""
    best = None
    for s in settings:
        for p in s["epochs"]:
            if p["wall_s"] <= seconds and math.isfinite(p["valid_ppl"]) and (
                    best is None or p["valid_ppl"] < best["valid_ppl"]):
                best = {"valid_ppl": p["valid_ppl"], "wall_s": p["wall_s"], "epoch": p["epoch"],
                        "setting": s["name"]}
    return best


def log_curve(log_path: Path, start: float) -> list[dict]:
    """The ``valid_ppl`` records of an rnngen metrics log, each placed at wall seconds from
    ``start`` (a ``time.time()``) by its ``time`` field."""
    points = []
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue                               # a last line cut short
        ppl = rec.get("valid_ppl")
        if ppl is None or isinstance(ppl, str):
            continue
        points.append({"wall_s": parse_time(rec["time"]) - start, "train_s": rec.get("train_seconds"),
                       "epoch": rec.get("epoch"), "valid_ppl": float(ppl)})
    return points


def parse_time(stamp: str) -> float:
    """An ISO 8601 UTC time of the metrics log (``2025-01-31T14:05:09.123Z``) as epoch seconds."""
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_budgets(text: str) -> list[float]:
    budgets = sorted({float(b) for b in text.split(",") if b.strip()})
    if not budgets or budgets[0] <= 0:
        raise argparse.ArgumentTypeError(f"budgets must be positive minutes, got {text!r}")
    return budgets


def parse_best(items: list[str]) -> dict[float, list[str]]:
    best = dict(BEST)
    for item in items:
        budget, sep, options = item.partition("=")
        if not sep:
            raise SystemExit(f"bench: --best wants BUDGET=OPTIONS, got {item!r}")
        best[float(budget)] = shlex.split(options)
    return best


def fmt_budget(minutes: float) -> str:
    return f"{minutes:g} min"


# --- running ---------------------------------------------------------------------------

def rnngen_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "rnngen", *map(str, args)]


def dry_run_options(train: Path, valid: Path, seconds: float) -> tuple[list[str], str]:
    """(options rnngen picks for this budget, where they came from)."""
    done = subprocess.run(rnngen_cmd("train", train, "--valid", valid, "--max-time", f"{seconds:g}", "--dry-run"),
                          capture_output=True, text=True)
    options = parse_options_line(done.stdout) if done.returncode == 0 else None
    if options is None:
        return [], "defaults (no --dry-run options line)"
    return options, "--dry-run"


def score_stream(model: Path, valid: Path, env=None) -> float | None:
    done = subprocess.run(rnngen_cmd("score", "--format", "jsonl", "--quiet", "--stream", valid, "--model", model),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"bench: rnngen score failed: {done.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(done.stdout.splitlines()[-1])["perplexity"]


def warm_up(option_sets: list[list[str]], head: Path, valid_head: Path, work: Path, env=None) -> float:
    """Train each option set a few steps on the corpus head and score the model; wall seconds."""
    t0 = time.perf_counter()
    for i, options in enumerate(option_sets):
        model = work / f"warm-{i}.npz"
        cmd = rnngen_cmd("train", head, "--valid", valid_head, *options, "--max-steps", WARM_STEPS,
                         "--output", model, "--quiet")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"bench: warm-up failed ({shlex.join(cmd)}):\n{done.stderr}")
        score_stream(model, valid_head, env)
    return time.perf_counter() - t0


def run_rnngen(name: str, budget: float, extra: list[str], train: Path, valid: Path, work: Path,
               valid_seen: Path | None = None) -> dict:
    seconds = 60.0 * budget
    tag = f"{name}-{budget:g}m"
    out, log = work / f"{tag}.npz", work / f"{tag}.jsonl"
    cmd = rnngen_cmd("train", train, "--valid", valid, "--max-time", f"{seconds:g}", *extra,
                     "--output", out, "--log-file", log)
    print(f"bench: {tag}: {shlex.join(cmd[2:])}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    start, t0 = time.time(), time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    result = {"name": name, "budget_min": budget, "options": extra, "command": shlex.join(cmd[2:]),
              "wall_s": wall, "returncode": done.returncode, "within_budget": wall <= seconds,
              "overrun_s": max(0.0, wall - seconds), "load1_before": load, "load1_after": os.getloadavg()[0],
              "curve": log_curve(log, start), "log": str(log)}
    (work / f"{tag}.stderr").write_text(done.stderr)
    if done.returncode != 0:
        print(f"bench: {tag} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    result["valid_ppl"] = score_stream(out, valid) if out.exists() else None
    if valid_seen is not None:                     # the lines faster-rnnlm evaluates
        result["valid_ppl_seen_lines"] = score_stream(out, valid_seen) if out.exists() else None
    print(f"bench: {tag}: valid ppl {result['valid_ppl']}, wall {wall:.1f} s", file=sys.stderr, flush=True)
    return result


def run_peer(binary: Path, name: str, options: list[str], train: Path, valid: Path, work: Path,
             limit_s: float) -> dict:
    """One faster-rnnlm setting, to its own stop or killed at ``limit_s``."""
    model = work / f"peer-{name}.bin"
    for old in (model, Path(f"{model}.nnet")):
        old.unlink(missing_ok=True)                # a model file found would be trained on
    cmd = [str(binary), "--rnnlm", str(model), "--train", str(train), "--valid", str(valid), *options, *PEER_COMMON]
    print(f"bench: faster-rnnlm {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    log = PeerLog()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=binary.parent)
    killed = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = limit_s - (time.perf_counter() - t0)
            if left <= 0:
                proc.kill()
                killed = True
                break
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            t = time.perf_counter() - t0
            if not chunk:
                break
            log.feed(chunk.decode("utf-8", "replace"), t)
    proc.wait()
    wall = time.perf_counter() - t0
    if not killed:
        log.close(wall)
    proc.stdout.close()
    (work / f"peer-{name}.log").write_text(log.output())
    best = min((p["valid_ppl"] for p in log.epochs), default=None)
    print(f"bench: faster-rnnlm {name}: {len(log.epochs)} epochs, best valid ppl {best}, wall {wall:.1f} s"
          f"{' (killed)' if killed else ''}", file=sys.stderr, flush=True)
    return {"name": name, "options": options + PEER_COMMON, "command": shlex.join(cmd), "wall_s": wall,
            "killed_at_limit": killed, "returncode": proc.returncode, "initial": log.initial,
            "epochs": log.epochs, "best_valid_ppl": best, "load1_before": load, "load1_after": os.getloadavg()[0]}


# --- facts -----------------------------------------------------------------------------

def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_model": cpu, "cores": os.cpu_count(),
            "python": sys.version.split()[0]}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    info["rnngen_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") or None
    for name in ("numpy", "numba"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


# --- report ----------------------------------------------------------------------------

def _ppl(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def rnngen_cell(run: dict | None) -> str:
    if run is None:
        return "—"
    within = "yes" if run["within_budget"] else f"no, +{run['overrun_s']:.0f} s"
    failed = "" if run["returncode"] == 0 else f", exit {run['returncode']}"
    seen = f" [{_ppl(run['valid_ppl_seen_lines'])}]" if "valid_ppl_seen_lines" in run else ""
    return f"{_ppl(run['valid_ppl'])}{seen} ({run['wall_s']:.0f} s, within: {within}{failed})"


def compared(run: dict | None) -> float | None:
    """The rnngen perplexity the ratio uses: on the lines faster-rnnlm evaluates, when they differ."""
    if run is None:
        return None
    return run["valid_ppl_seen_lines"] if "valid_ppl_seen_lines" in run else run["valid_ppl"]


def table(results: dict) -> str:
    defaults = {r["budget_min"]: r for r in results["rnngen_defaults"]}
    best = {r["budget_min"]: r for r in results["rnngen_best"]}
    lines = ["| budget | rnngen defaults: valid ppl (wall s, within budget?) | rnngen best configuration | "
             "faster-rnnlm best within budget (setting) | ratio rnngen defaults / faster-rnnlm |",
             "| --- | --- | --- | --- | ---: |"]
    for budget in results["budgets_min"]:
        d, b = defaults.get(budget), best.get(budget)
        peer = peer_value_at(results["faster_rnnlm"], 60.0 * budget)
        peer_cell = "none within budget" if peer is None else (
            f"{peer['valid_ppl']:.1f} ({peer['setting']}, epoch {peer['epoch']}, {peer['wall_s']:.0f} s)")
        ratio = "n/a"
        if peer and compared(d):
            ratio = f"{compared(d) / peer['valid_ppl']:.2f}"
        if peer and compared(b):
            ratio += f" (best config {compared(b) / peer['valid_ppl']:.2f})"
        lines.append(f"| {fmt_budget(budget)} | {rnngen_cell(d)} | {rnngen_cell(b)} | {peer_cell} | {ratio} |")
    return "\n".join(lines)


def report(results: dict) -> str:
    m = results["machine"]
    out = [f"## Time to perplexity: {results['corpus']}, budgets {', '.join(map(fmt_budget, results['budgets_min']))}",
           "", table(results), "",
           "Ratio < 1: rnngen's valid perplexity is lower. rnngen: `rnngen score --stream` of the saved model; "
           "wall time of the whole `rnngen train` command. faster-rnnlm: best epoch validated within the budget.", ""]
    for r in results["rnngen_defaults"]:
        out.append(f"* rnngen defaults at {fmt_budget(r['budget_min'])}: options "
                   f"`{shlex.join(r['chosen_options']) or '(none)'}` (from {r['options_source']}); "
                   f"load {r['load1_before']:.1f} before, {r['load1_after']:.1f} after")
    for r in results["rnngen_best"]:
        out.append(f"* rnngen best configuration at {fmt_budget(r['budget_min'])}: `{shlex.join(r['options'])}`; "
                   f"load {r['load1_before']:.1f} before, {r['load1_after']:.1f} after")
    for s in results["faster_rnnlm"]:
        stop = "killed at the largest budget" if s["killed_at_limit"] else "its own stop"
        out.append(f"* faster-rnnlm {s['name']} (`{shlex.join(s['options'])}`): {len(s['epochs'])} epochs in "
                   f"{s['wall_s']:.0f} s ({stop}), best valid ppl {_ppl(s['best_valid_ppl'])}; "
                   f"load {s['load1_before']:.1f} before, {s['load1_after']:.1f} after")
    v = results.get("valid_seen")
    if v and v["unseen_words"]:
        out.append(f"* {v['unseen_words']:,} of the {v['words']:,} valid words are not in train: faster-rnnlm skips "
                   f"the lines that hold one and evaluates {v['lines_without_unseen_words']:,} of the {v['lines']:,} "
                   "lines, so the ratio compares rnngen's `score --stream` on those lines (the [bracketed] "
                   "perplexities); the first figure of a cell is rnngen on all the lines, unknown words as <unk>")
    c = results.get("compile")
    if c:
        out.append(f"* first-ever Numba compile: {c['compile_s']:.1f} s (warm-up with an empty cache "
                   f"{c['cold_s']:.1f} s, warm {c['warm_s']:.1f} s)")
    else:
        out.append("* first-ever Numba compile: not measured")
    out.append(f"* machine: {m['cpu_model']}, {m['cores']} cores; rnngen {m['rnngen_commit']}, "
               f"numpy {m['numpy']}, numba {m['numba']}, Python {m['python']}; {m['date']}")
    return "\n".join(out)


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
        import matplotlib.ticker
    except ImportError:
        print("bench: no picture (matplotlib missing: pip install 'rnngen[plot]')", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results["rnngen_defaults"] + results["rnngen_best"]):
        colour = colours[i % len(colours)]
        label = f"rnngen {'defaults' if r['name'] == 'defaults' else 'best config'}, {fmt_budget(r['budget_min'])}"
        xs = [p["wall_s"] / 60 for p in r["curve"]]
        ys = [p["valid_ppl"] for p in r["curve"]]
        style = "-" if r["name"] == "defaults" else "-."
        ax.plot(xs, ys, style, color=colour, marker=".", label=label)
        if r["valid_ppl"]:
            ax.plot([r["wall_s"] / 60], [r["valid_ppl"]], "*", color=colour, markersize=13, markeredgecolor="k")
    greys = ("#333333", "#777777", "#aaaaaa")
    for i, s in enumerate(results["faster_rnnlm"]):
        xs = [p["wall_s"] / 60 for p in s["epochs"]]
        ys = [p["valid_ppl"] for p in s["epochs"]]
        ax.plot(xs, ys, "--", color=greys[i % len(greys)], marker="x", label=f"faster-rnnlm {s['name']}")
    for budget in results["budgets_min"]:
        ax.axvline(budget, color="#dddddd", lw=0.8, zorder=0)
        peer = peer_value_at(results["faster_rnnlm"], 60.0 * budget)
        if peer:
            ax.plot([budget], [peer["valid_ppl"]], "D", color="k", markersize=7, markerfacecolor="none")
    ax.plot([], [], "*", color="grey", markersize=11, markeredgecolor="k", label="rnngen final (score --stream)")
    ax.plot([], [], "D", color="k", markerfacecolor="none", label="faster-rnnlm best within budget")
    finite = [y for line in ax.get_lines() for y in line.get_ydata() if isinstance(y, float) and math.isfinite(y)]
    ax.set_xscale("log")
    ax.set_yscale("log")
    if finite:
        low = min(finite)
        ax.set_ylim(low * 0.93, min(max(finite) * 1.05, low * 4))
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    xs = [x for line in ax.get_lines() for x in line.get_xdata() if isinstance(x, float) and x > 0]
    xs += list(results["budgets_min"])
    ax.set_xticks([t for t in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120) if min(xs) / 1.5 <= t <= max(xs) * 1.5])
    if finite:
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)))
    ax.set_xlabel("wall time (minutes, log scale)")
    ax.set_ylabel("valid perplexity (log scale)")
    m = results["machine"]
    ax.set_title(f"Time to perplexity, {results['corpus']}: rnngen {m['rnngen_commit']} vs faster-rnnlm\n"
                 f"{m['cpu_model']}, {m['cores']} cores", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main ------------------------------------------------------------------------------

def head_file(src: Path, dst: Path, lines: int) -> Path:
    with open(src, encoding="utf-8", errors="replace") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= lines:
                break
            out.write(line)
    return dst


def seen_lines(train: Path, valid: Path, dst: Path) -> dict:
    """Write to ``dst`` the valid lines whose words were all seen in train: the lines
    faster-rnnlm evaluates (it skips, and prints ``OOV`` for, a sentence with an unseen word;
    rnngen scores such a word as ``<unk>``). Returns the counts."""
    seen = set()
    with open(train, encoding="utf-8", errors="replace") as f:
        for line in f:
            seen.update(line.split())
    lines = kept = words = unseen = 0
    with open(valid, encoding="utf-8", errors="replace") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            split = line.split()
            lines += 1
            words += len(split)
            missing = sum(w not in seen for w in split)
            unseen += missing
            if not missing:
                kept += 1
                out.write(line if line.endswith("\n") else line + "\n")
    return {"lines": lines, "lines_without_unseen_words": kept, "words": words, "unseen_words": unseen,
            "file": str(dst)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=CORPORA, default="ptb")
    ap.add_argument("--budgets", type=parse_budgets, default=list(BUDGETS),
                    help="comma-separated budgets in minutes (default: 1,2,5,15,30)")
    ap.add_argument("--best", action="append", default=[], metavar="B=OPTIONS",
                    help="extra rnngen options for the 'best configuration' row at budget B (repeatable)")
    ap.add_argument("--shared", type=Path, default=SHARED,
                    help="the shared folder with corpora/ and anchors/ (default: ../shared)")
    ap.add_argument("--rnnlm", type=Path, help="faster-rnnlm binary (default: SHARED/anchors/faster-rnnlm/rnnlm)")
    ap.add_argument("--no-compile-time", action="store_true", help="skip the first-ever compile measurement")
    ap.add_argument("--json", type=Path, help="results file (default: bench/results/ttp-CORPUS-STAMP.json)")
    ap.add_argument("--plot", type=Path, help="picture (default: docs/ttp-CORPUS.png)")
    ap.add_argument("--work", type=Path, help="models, logs and outputs (default: bench/results/ttp-CORPUS-STAMP/)")
    ap.add_argument("--report", type=Path, metavar="FILE", help="print a saved run's table and redraw its picture")
    args = ap.parse_args(argv)

    if args.report:
        try:
            results = json.loads(args.report.read_text())
        except (OSError, ValueError) as e:
            print(f"bench: cannot read {args.report}: {e}", file=sys.stderr)
            return 1
        print(report(results))
        if args.plot:
            plot(results, args.plot)
        return 0

    corpus_dir = args.shared / "corpora" / args.corpus
    train, valid = corpus_dir / "train.txt", corpus_dir / "valid.txt"
    binary = args.rnnlm or args.shared / "anchors" / "faster-rnnlm" / "rnnlm"
    for path, what in ((train, "corpus"), (valid, "corpus"), (binary, "faster-rnnlm binary")):
        if not path.is_file():
            print(f"bench: skipped: {what} not found ({path})")
            return 0
    if not os.access(binary, os.X_OK):
        print(f"bench: skipped: faster-rnnlm binary not executable ({binary})")
        return 0
    train, valid, binary = train.resolve(), valid.resolve(), binary.resolve()
    budgets, best = args.budgets, parse_best(args.best)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work or RESULTS_DIR / f"ttp-{args.corpus}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.json or RESULTS_DIR / f"ttp-{args.corpus}-{stamp}.json"
    plot_path = args.plot or ROOT / "docs" / f"ttp-{args.corpus}.png"
    info = machine()
    print(f"bench: {info['cpu_model']}, {info['cores']} cores; load {os.getloadavg()[0]:.2f}; {args.corpus}, "
          f"budgets {','.join(f'{b:g}' for b in budgets)} min; work files in {work}", file=sys.stderr, flush=True)

    # Warm the Numba cache with every option set the timed runs will use.
    chosen = {b: dry_run_options(train, valid, 60.0 * b) for b in budgets}
    option_sets = []
    for options in [chosen[b][0] for b in budgets] + [best[b] for b in budgets if b in best]:
        if options not in option_sets:
            option_sets.append(options)
    head = head_file(train, work / "warm-train.txt", WARM_LINES)
    valid_head = head_file(valid, work / "warm-valid.txt", WARM_VALID_LINES)
    print(f"bench: warming the Numba cache ({len(option_sets)} option set(s))", file=sys.stderr, flush=True)
    warm_up(option_sets, head, valid_head, work)
    compile_info = None
    if not args.no_compile_time:
        with tempfile.TemporaryDirectory(prefix="ttp-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            cold = warm_up(option_sets, head, valid_head, work, env)
            warm = warm_up(option_sets, head, valid_head, work, env)
        compile_info = {"cold_s": cold, "warm_s": warm, "compile_s": cold - warm, "option_sets": option_sets}
        print(f"bench: first-ever compile {cold - warm:.1f} s", file=sys.stderr, flush=True)

    valid_seen = seen_lines(train, valid, work / "valid-seen-lines.txt")
    seen_path = Path(valid_seen["file"]) if valid_seen["unseen_words"] else None
    defaults, best_runs = [], []
    for b in budgets:
        run = run_rnngen("defaults", b, [], train, valid, work, seen_path)
        run["chosen_options"], run["options_source"] = chosen[b]
        defaults.append(run)
        if b in best:
            best_runs.append(run_rnngen("best", b, best[b], train, valid, work, seen_path))
    limit = 60.0 * max(budgets)
    peers = [run_peer(binary, name, options, train, valid, work, limit)
             for name, options, needs in PEER_SETTINGS if max(budgets) >= needs]

    results = {"corpus": args.corpus, "train": str(train), "valid": str(valid), "budgets_min": budgets,
               "valid_seen": valid_seen, "machine": info, "compile": compile_info,
               "rnngen_defaults": defaults, "rnngen_best": best_runs,
               "faster_rnnlm": peers, "faster_rnnlm_binary": str(binary), "work_dir": str(work),
               "value_at_budget": {f"{b:g}": peer_value_at(peers, 60.0 * b) for b in budgets}}
    write_json(json_path, results)
    print(report(results))
    if plot(results, plot_path):
        print(f"\nbench: picture {plot_path}")
    print(f"bench: results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
