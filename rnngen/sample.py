"""Generating text: lines side by side in blocks, one token per step, until each line's <eos>."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import blas
from .errors import RnngenError
from .kernels import GRU, LSTM, RNN, sample_lines
from .lanes import SERIAL, Lanes
from .lanes import shared as shared_lanes
from .model import Model
from .vocab import Vocab

CELL_CODES = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
BLOCK = 256   # lines generated side by side; bounds memory for `--n 100000` and lets output start early


def sample(model: Model, vocab: Vocab, n: int = 10, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, prime: str = "", max_length: int = 100,
           seed: int | None = None) -> list[str]:
    """Generate ``n`` lines. Each starts from the zero state after ``<eos>`` (a fresh line),
    continues ``prime`` if given, and ends at ``<eos>`` or after ``max_length`` tokens."""
    blocks = sample_blocks(model, vocab, n, temperature, top_k, top_p, prime, max_length, seed)
    return [line for block in blocks for line in block]


def sample_blocks(model: Model, vocab: Vocab, n: int = 10, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, prime: str = "", max_length: int = 100,
                  seed: int | None = None) -> Iterator[list[str]]:
    """Like :func:`sample`, yielding the lines block by block (``BLOCK`` lines at a time).

    With NumPy's BLAS on several threads (``rnngen sample --n N``, N > 1, on several cores:
    :func:`rnngen.blas.use_threads`), each block's lines are split over that many lanes, one
    sampling kernel per lane with its BLAS on one thread: the lines are independent, so each
    lane runs without waiting for the others, where splitting each of the kernel's small
    products over the threads would make them meet at every product."""
    if model.config.bidirectional:
        raise RnngenError("a bidirectional model cannot generate text: it predicts a word from both sides "
                          "(use it with rnngen fill or score; sample from a forward model)")
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
    feed = [vocab.eos]
    if prime:
        prime_ids, oov = vocab.encode_line(prime)
        if len(prime_ids) and oov == len(prime_ids):
            raise RnngenError("--prime holds no token the model knows (all are out of vocabulary)")
        feed += [int(i) for i in prime_ids]
    rng = np.random.default_rng(seed)
    primed = model.zero_state(1)
    if len(feed) > 1:
        _, _, primed = model.hidden_forward(np.asarray(feed[:-1], dtype=np.int32)[:, None], primed)
    sep = " " if vocab.unit == "word" else ""
    threads = blas.thread_count()
    lanes = shared_lanes(threads) if threads > 1 else SERIAL
    for start in range(0, n, BLOCK):
        uniforms = rng.random((min(BLOCK, n - start), max_length))      # line i draws with row i
        block = _sample_block(model, primed, feed, uniforms, vocab.eos,
                              float(temperature), int(top_k), float(top_p), lanes)
        texts = [vocab.decode(ids) for ids in block]
        yield [sep.join(part for part in (prime, text) if part) if prime else text for text in texts]


def _sample_block(model, primed, read, uniforms, eos, temperature, top_k, top_p, lanes: Lanes = SERIAL):
    """Token ids of ``len(uniforms)`` lines (without <eos>), line i drawn with ``uniforms[i]``,
    generated in one call of the sampling kernel per lane (each on a slice of the lines);
    ``read``: the inputs so far (<eos>, the prime), the last one next."""
    first = read[-1]
    cfg = model.config
    layers = [model.layer_params(layer) for layer in range(cfg.layers)]
    dtype, H = model.dtype, cfg.hidden
    W_x = np.stack([lp["W_x"] for lp in layers[1:]]) if cfg.layers > 1 else np.empty((0, H, 0), dtype)
    b_hn = np.stack([lp.get("b_hn", np.zeros(H, dtype)) for lp in layers])
    W_h, b = np.stack([lp["W_h"] for lp in layers]), np.stack([lp["b"] for lp in layers])
    output, state0 = model.output.sample_form(model.params), np.ascontiguousarray(primed[:, :, 0])
    K = model.history + 1 if cfg.direct_order else 0                  # the inputs a context reads
    read0 = np.array((list(reversed(read)) + [eos] * K)[:K], dtype=np.int64)  # newest first, <eos> before the start
    direct = model.params.get("direct", np.zeros(1, dtype))
    m = len(uniforms)
    generated = np.zeros(uniforms.shape, dtype=np.int32)
    lengths = np.empty(m, dtype=np.int64)

    def lines(a, c):
        lengths[a:c] = sample_lines(CELL_CODES[cfg.cell], model.cell.relu, model.params["embed"], layers[0]["W_x"],
                                    W_x, W_h, b, b_hn, *output, direct, read0, state0, first, eos, temperature,
                                    top_k, top_p,
                                    uniforms[a:c], generated[a:c])

    lanes.map_rows(lines, m)
    return [generated[i, :lengths[i]] for i in range(m)]
