"""Time to a validation perplexity on Penn Treebank: rnngen (class or full softmax) against
PyTorch (full softmax), the same model, data and optimiser, side by side in one run.

    python bench/time_to_ppl.py                              # what `make bench-ttp` runs
    python bench/time_to_ppl.py --target 220 --threads 2 --max-minutes 15

Each side trains a vanilla RNN (tanh, hidden 200, embed 200, PTB 10k vocabulary, batch 20,
bptt 35, Adam lr 0.002, clip 5, seed 0) in its own process and evaluates the whole valid
stream (batch 1, from <eos>) every --eval-every training chunks. The clock counts training
only (evaluation is paused out); a side stops at --target or --max-minutes. Prints each
side's curve and the time to the target, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from common import PTB_DIR, RESULTS_DIR, loadavg, machine_info, set_thread_env, write_json

MODEL = {"hidden": 200, "batch": 20, "bptt": 35, "lr": 0.002, "clip": 5.0, "seed": 0}


def curve(step, evaluate, n_chunks: int, eval_every: int, target: float, max_seconds: float,
          tokens_per_chunk: int) -> dict:
    """Train chunk after chunk (``step(i)``), evaluating every ``eval_every`` chunks; the
    clock runs only while training. Stops at the target perplexity or the time limit."""
    points, trained, chunk = [], 0.0, 0
    while trained < max_seconds:
        t0 = time.perf_counter()
        for _ in range(eval_every):
            step(chunk % n_chunks)
            chunk += 1
        trained += time.perf_counter() - t0
        ppl = evaluate()
        points.append({"train_s": trained, "chunks": chunk, "epochs": chunk / n_chunks, "ppl": ppl})
        print(f"  {chunk / n_chunks:5.2f} epochs  {trained:7.1f} s  valid ppl {ppl:8.2f}", file=sys.stderr, flush=True)
        if ppl <= target or not math.isfinite(ppl):
            break
    reached = next((p["train_s"] for p in points if p["ppl"] <= target), None)
    return {"points": points, "target": target, "seconds_to_target": reached,
            "tokens_per_s": chunk * tokens_per_chunk / trained}


def rnngen_side(args, train_ids, valid_ids, V) -> dict:
    from rnngen import blas
    from rnngen.lanes import training_lanes
    from rnngen.model import Model, ModelConfig
    from rnngen.optim import make_optimizer
    from rnngen.score import stream_logprob
    from rnngen.train import batchify, time_major, token_counts, train_step

    m = MODEL
    config = ModelConfig(vocab_size=V, hidden=m["hidden"], softmax=args.softmax).with_classes(
        token_counts(train_ids, V))
    model = Model.init(config, seed=m["seed"])
    optim = make_optimizer("adam", model.params)
    inputs, targets = batchify(train_ids, m["batch"])
    state = model.zero_state(m["batch"])
    lanes = training_lanes(args.threads, args.softmax)                 # as `rnngen train` does

    def step(i: int) -> None:
        nonlocal state
        start, stop = i * m["bptt"], (i + 1) * m["bptt"]
        result = train_step(model, optim, time_major(inputs, start, stop), time_major(targets, start, stop),
                            state, m["lr"], m["clip"], None, lanes)
        if not result.finite:
            raise SystemExit(f"training diverged at chunk {i}")
        state = result.state

    def evaluate() -> float:
        with blas.numpy_threads(args.threads):
            logprob, n = stream_logprob(model, valid_ids)
        return math.exp(-logprob / n)

    return curve(step, evaluate, inputs.shape[1] // m["bptt"], args.eval_every, args.target,
                 60 * args.max_minutes, m["batch"] * m["bptt"])


def torch_side(args, train_ids, valid_ids, V) -> dict:
    import torch
    import torch.nn.functional as F
    from torch_lm import build_model, detach

    m = MODEL
    torch.set_num_threads(args.threads)
    torch.manual_seed(m["seed"])
    model = build_model("rnn", V, m["hidden"], m["hidden"], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=m["lr"])
    L = (len(train_ids) - 1) // m["batch"]
    data = torch.from_numpy(train_ids[:m["batch"] * L + 1].astype("int64"))
    inputs = data[:-1].view(m["batch"], L).t().contiguous()
    targets = data[1:].view(m["batch"], L).t().contiguous()
    hidden = model.init_hidden(m["batch"])
    valid = torch.from_numpy(valid_ids.astype("int64"))
    valid_inputs = torch.cat((torch.zeros(1, dtype=torch.int64), valid[:-1]))   # first input <eos>

    def step(i: int) -> None:
        nonlocal hidden
        model.train()
        x, y = inputs[i * m["bptt"]:(i + 1) * m["bptt"]], targets[i * m["bptt"]:(i + 1) * m["bptt"]]
        hidden = detach(hidden)
        optimizer.zero_grad()
        logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1), reduction="sum") / m["batch"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), m["clip"])
        optimizer.step()

    def evaluate() -> float:
        model.eval()
        total, h = 0.0, model.init_hidden(1)
        with torch.no_grad():
            for start in range(0, len(valid), 256):
                logits, h = model(valid_inputs[start:start + 256, None], h)
                logp = F.log_softmax(logits[:, 0], dim=-1)
                total += logp.gather(1, valid[start:start + 256, None]).sum().item()
        return math.exp(-total / len(valid))

    return curve(step, evaluate, L // m["bptt"], args.eval_every, args.target, 60 * args.max_minutes,
                 m["batch"] * m["bptt"])


def worker(args) -> None:
    set_thread_env(args.threads)
    from common import load_data

    if args.side == "rnngen":
        from rnngen import blas

        blas.set_threads(args.threads)
    train_ids, valid_ids, tokens = load_data(str(args.data))
    side = rnngen_side if args.side == "rnngen" else torch_side
    result = side(args, train_ids, valid_ids, len(tokens))
    result.update(side=args.side, softmax=args.softmax, threads=args.threads)
    write_json(args.json, result)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=220.0, help="valid perplexity to reach")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=133, help="training chunks between evaluations (~1/10 epoch)")
    ap.add_argument("--max-minutes", type=float, default=15.0, help="training time limit per side")
    ap.add_argument("--ptb", type=Path, default=PTB_DIR)
    ap.add_argument("--side", choices=("rnngen", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--softmax", default="class", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        worker(args)
        return 0

    import subprocess

    from common import thread_env
    from run import prepare

    train_path, valid_path = args.ptb / "train.txt", args.ptb / "valid.txt"
    if not train_path.exists():
        print(f"bench: skipped: Penn Treebank not found ({train_path})")
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = RESULTS_DIR / f"tmp-{stamp}"
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "ptb.npz"
    prepare(train_path, valid_path, data)
    info = machine_info()
    print(f"bench: {info['date']}  {info['cpu_model']}, {info['cpus']} CPUs; load {loadavg()}; "
          f"target valid ppl {args.target:g}, {args.threads} thread(s)", flush=True)
    runs = {}
    for side, softmax in (("rnngen", "class"), ("torch", "full"), ("rnngen", "full")):
        name = f"{side}-{softmax}"
        print(f"bench: {name} ...", flush=True)
        out = tmp / f"ttp-{name}.json"
        cmd = [sys.executable, __file__, "--side", side, "--softmax", softmax, "--data", str(data),
               "--json", str(out), "--target", str(args.target), "--threads", str(args.threads),
               "--eval-every", str(args.eval_every), "--max-minutes", str(args.max_minutes)]
        subprocess.run(cmd, env=thread_env(args.threads), check=True)
        runs[name] = json.loads(out.read_text())
    base = runs["torch-full"]["seconds_to_target"]
    print(f"\n| side | softmax | train tokens/s | seconds to valid ppl {args.target:g} | vs PyTorch |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in runs.values():
        t = r["seconds_to_target"]
        speedup = f"{base / t:.2f}x" if t and base else "n/a"
        print(f"| {r['side']} | {r['softmax']} | {r['tokens_per_s']:,.0f} | "
              f"{f'{t:.0f}' if t else 'not reached'} | {speedup} |")
    out = RESULTS_DIR / f"ttp-{stamp}.json"
    write_json(out, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs})
    print(f"\nbench: results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
