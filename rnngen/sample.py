"""Generating text: n lines side by side, one token per step, until each line's <eos>."""

from __future__ import annotations

import numpy as np

from .errors import RnngenError
from .kernels import sample_rows
from .model import Model
from .vocab import Vocab


def sample(model: Model, vocab: Vocab, n: int = 10, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, prime: str = "", max_length: int = 100,
           seed: int | None = None) -> list[str]:
    """Generate ``n`` lines. Each starts from the zero state after ``<eos>`` (a fresh line),
    continues ``prime`` if given, and ends at ``<eos>`` or after ``max_length`` tokens."""
    if n < 0:
        raise RnngenError("--n must be at least 0")
    if not temperature >= 0:
        raise RnngenError("--temperature must be 0 (greedy) or more")
    if top_k < 0 or top_k > len(vocab):
        raise RnngenError(f"--top-k must be between 1 and the vocabulary size ({len(vocab)}), or 0 for all")
    if not 0 < top_p <= 1:
        raise RnngenError("--top-p must be in (0, 1]")
    if max_length < 1:
        raise RnngenError("--max-length must be at least 1")
    rng = np.random.default_rng(seed)
    feed = [vocab.eos]
    if prime:
        prime_ids, oov = vocab.encode_line(prime)
        if len(prime_ids) and oov == len(prime_ids):
            raise RnngenError("--prime holds no token the model knows (all are out of vocabulary)")
        feed += [int(i) for i in prime_ids]
    if n == 0:
        return []
    state = model.zero_state(1)
    if len(feed) > 1:
        _, _, state = model.hidden_forward(np.asarray(feed[:-1], dtype=np.int32)[:, None], state)
    state = np.ascontiguousarray(np.repeat(state, n, axis=2))
    current = np.full(n, feed[-1], dtype=np.int32)
    generated = np.zeros((max_length, n), dtype=np.int32)
    finished = np.zeros(n, dtype=bool)
    length = np.full(n, max_length)
    for t in range(max_length):
        top, _, state = model.hidden_forward(current[None, :], state)
        logits = model.next_logprobs(top[0])
        sample_rows(logits, float(temperature), int(top_k), float(top_p), rng.random(n), current)
        generated[t] = current
        ended = (current == vocab.eos) & ~finished
        length[ended] = t
        finished |= ended
        if finished.all():
            break
    sep = " " if vocab.unit == "word" else ""
    lines = []
    for i in range(n):
        text = vocab.decode(generated[: length[i], i])
        lines.append(sep.join(part for part in (prime, text) if part) if prime else text)
    return lines
