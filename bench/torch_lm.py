"""PyTorch (CPU) peer of rnngen, written the way PyTorch users write it (after the
word_language_model example): nn.Embedding -> nn.RNN(tanh) / nn.LSTM -> nn.Linear,
F.cross_entropy, clip_grad_norm_, torch.optim.SGD, hidden state detached between chunks.

    python bench/torch_lm.py --data bench/results/ptb.npz --cell lstm --layers 2 --threads 2

Loss per chunk = cross_entropy(reduction="sum") / batch: the summed NLL over the chunk
divided by the batch size, the same as rnngen (so lr 1 / clip 5 mean the same). Same
protocol, same id stream and the same timing code as bench/rnngen_lm.py.
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


def build_model(cell: str, vocab: int, embed: int, hidden: int, layers: int):
    import torch
    from torch import nn

    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(vocab, embed)
            if cell == "lstm":
                self.rnn = nn.LSTM(embed, hidden, layers)
            else:
                self.rnn = nn.RNN(embed, hidden, layers, nonlinearity="tanh")
            self.decoder = nn.Linear(hidden, vocab)
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)       # as rnngen initialises
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(out), hidden

        def init_hidden(self, batch: int):
            h = torch.zeros(layers, batch, hidden)
            return (h, h.clone()) if cell == "lstm" else h

    return RNNModel()


def detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def main(argv=None) -> dict:
    args = worker_parser(__doc__).parse_args(argv)
    set_thread_env(args.threads)

    import math

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ids, valid_ids, tokens = load_data(args.data)
    V, embed = len(tokens), args.embed or args.hidden
    result = {"side": "torch", "cell": args.cell, "hidden": args.hidden, "layers": args.layers, "embed": embed,
              "threads": args.threads, "vocab": V, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "rss_after_import_mb": current_rss_mb()}

    # --- training -------------------------------------------------------------------
    model = build_model(args.cell, V, embed, args.hidden, args.layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    L = (len(train_ids) - 1) // args.batch                              # == rnngen.train.batchify
    data = torch.from_numpy(train_ids[:args.batch * L + 1].astype("int64"))
    inputs = data[:-1].view(args.batch, L).t().contiguous()
    targets = data[1:].view(args.batch, L).t().contiguous()
    n_chunks = L // args.bptt
    hidden = model.init_hidden(args.batch)
    model.train()

    def step(i: int) -> float:
        nonlocal hidden
        x, y = inputs[i * args.bptt:(i + 1) * args.bptt], targets[i * args.bptt:(i + 1) * args.bptt]
        hidden = detach(hidden)                                         # truncated BPTT
        optimizer.zero_grad()
        logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1), reduction="sum") / args.batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        nll = loss.item() * args.batch                                  # summed NLL, as rnngen returns
        if not math.isfinite(nll):
            raise SystemExit(f"training diverged at chunk {i}")
        return nll

    if training_phase(args, step, n_chunks, result):
        return None

    # --- scoring: the valid set as one stream, batch 1, chunks of score_chunk, no grad ----
    def stream_logprob(ids) -> tuple[float, int]:
        ids = torch.from_numpy(ids.astype("int64"))
        x_all = torch.cat((torch.zeros(1, dtype=torch.int64), ids[:-1]))  # first input <eos>
        total, h = 0.0, model.init_hidden(1)
        with torch.no_grad():
            for start in range(0, len(ids), args.score_chunk):
                x = x_all[start:start + args.score_chunk, None]
                y = ids[start:start + args.score_chunk]
                logits, h = model(x, h)
                logp = F.log_softmax(logits[:, 0], dim=-1)
                total += logp.gather(1, y[:, None]).sum().item()
        return total, len(ids)

    if args.serve == "score":
        model.eval()
        return serve_scoring(stream_logprob, valid_ids)
    if args.score_tokens >= 0 and args.serve is None:
        model.eval()
        result["score"] = timed_scoring(stream_logprob, valid_ids, args.score_tokens, args.score_seconds)
        result["score"]["chunk"] = args.score_chunk

    # --- scoring lines: each alone from the zero state, 64 side by side, padded and masked --
    def lines_logprob(lines) -> float:
        total = 0.0
        order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
        with torch.no_grad():
            for start in range(0, len(order), 64):
                group = [lines[i] for i in order[start:start + 64]]
                T = max(len(line) for line in group) + 1
                x = torch.zeros(T, len(group), dtype=torch.int64)             # <eos> first, and as padding
                y = torch.zeros(T, len(group), dtype=torch.int64)
                mask = torch.zeros(T, len(group), dtype=torch.bool)
                for col, line in enumerate(group):
                    ids = torch.from_numpy(line.astype("int64"))
                    x[1:len(line) + 1, col] = ids
                    y[:len(line), col] = ids                                  # then <eos> at len(line)
                    mask[:len(line) + 1, col] = True
                logits, _ = model(x, model.init_hidden(len(group)))
                logp = F.log_softmax(logits, dim=-1).gather(2, y[:, :, None])[:, :, 0]
                total += logp[mask].sum().item()
        return total

    if args.score_lines >= 0 or args.serve == "lines":
        model.eval()
        lines = valid_lines(valid_ids)[:args.score_lines or None]
        if args.serve == "lines":
            return serve_lines(lines_logprob, lines, lines)
        result["score_lines"] = timed_line_scoring(lines_logprob, lines, sum(len(line) + 1 for line in lines))

    # --- sampling: a batched multinomial loop on a freshly initialised model -------------
    torch.manual_seed(args.seed)
    fresh = build_model(args.cell, V, embed, args.hidden, args.layers).eval()

    def sample(n: int, max_length: int, seed: int) -> list[str]:
        gen = torch.Generator().manual_seed(seed)
        h = fresh.init_hidden(n)
        current = torch.zeros(n, dtype=torch.int64)                     # <eos> starts a line
        generated = torch.zeros(max_length, n, dtype=torch.int64)
        finished = torch.zeros(n, dtype=torch.bool)
        length = torch.full((n,), max_length)
        with torch.no_grad():
            for t in range(max_length):
                logits, h = fresh(current[None], h)
                probs = F.softmax(logits[0], dim=-1)
                current = torch.multinomial(probs, 1, generator=gen)[:, 0]
                generated[t] = current
                ended = (current == 0) & ~finished
                length[ended] = t
                finished |= ended
                if bool(finished.all()):
                    break
        cols = generated.t().tolist()
        return [" ".join(tokens[i] for i in cols[b][:int(length[b])]) for b in range(n)]

    result["sample"] = {}
    for n in args.sample_n:
        sample(n, 5, 0)                                                     # warm-up
        result["sample"][str(n)] = timed_sampling(lambda seed, n=n: sample(n, args.sample_length, seed),
                                                  n, args.sample_length, args.sample_seconds)
    finish(args, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
