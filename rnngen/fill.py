"""Filling a blank: which token fits at the ``___`` of a line, given its left and right context.

With a bidirectional (cloze) model the output layer at the blank answers directly: one
pass each way over the line gives p(w | left, right) over the whole vocabulary
(:mod:`rnngen.cloze`). With an ordinary forward language model the answer is exact too:

    p(w | left, right) = p(left w right) / sum_v p(left v right)

where p(left w right) is the sentence's probability, ``<eos>`` included. The left context
is read once (batch 1); every candidate w then continues from that state as one row of a
batch through the right context, in blocks of CANDIDATE_ROWS rows, and its score is
log p(w | left) plus the log-probabilities of the right context's tokens and ``<eos>``.

``<eos>`` is never a candidate and ``<unk>`` only when allowed; the probabilities are
normalised over the tokens that may fill the blank (the given candidates, if any), and
``logprob`` is the natural log of ``prob``. A bidirectional model's answer can be
re-ranked exactly by a forward model (``rescore``): its RESCORE_POOL most probable tokens
(at least top_k) are scored as above and normalised among themselves.

:func:`pseudo_log_likelihood` is what ``rnngen score`` gives for a bidirectional model:
the sum over the tokens of log p(x_t | every other token of the line), not a sentence
probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cloze import ClozeModel, group_by_length, lines_logprobs
from .errors import RnngenError
from .model import Model
from .score import SentenceScore, jobs_logprobs
from .vocab import Vocab

CANDIDATE_ROWS = 256     # candidates continued side by side through the right context
RESCORE_POOL = 50        # a bidirectional model's top tokens that --rescore re-ranks


@dataclass
class Candidate:
    token: str
    prob: float             # normalised over the tokens that may fill the blank
    logprob: float          # ln(prob)


@dataclass
class FillResult:
    text: str
    candidates: list[Candidate] = field(default_factory=list)     # most probable first
    error: str | None = None        # why the line could not be filled (then no candidates)
    left: str = ""                  # the text before and after the blank
    right: str = ""

    def filled(self, token: str) -> str:
        """The line with ``token`` in the blank."""
        return f"{self.left}{token}{self.right}"


def split_blank(line: str, blank: str, unit: str = "word") -> tuple[str, str]:
    """The text left and right of the line's one ``blank``; RnngenError if there is none,
    more than one, nothing else in the line, or (``unit`` word) it is not a word of its own."""
    if not line.strip():
        raise RnngenError("empty line")
    count = line.count(blank)
    if count != 1:
        raise RnngenError(f"no blank {blank!r} in the line" if count == 0 else
                          f"{count} blanks {blank!r} in the line (fill takes one per line)")
    i = line.index(blank)
    left, right = line[:i], line[i + len(blank):]
    if not (left + right).strip():
        raise RnngenError(f"the line holds only the blank {blank!r}: there is no context to fill it from")
    if unit == "word" and (left[-1:].strip() or right[:1].strip()):
        raise RnngenError(f"the blank {blank!r} must be a word of its own (spaces around it)")
    return left, right


def allowed_ids(vocab: Vocab, candidates: list[str] | None = None, allow_unk: bool = False) -> np.ndarray:
    """Ids that may fill a blank: the candidates given (each must be one known token), or
    the whole vocabulary but ``<eos>`` (and ``<unk>`` unless ``allow_unk``)."""
    if candidates is None:
        ids = np.arange(len(vocab))
        return ids[(ids != vocab.eos) & ((ids != vocab.unk) | allow_unk)]
    out = []
    for cand in candidates:
        token = cand.lower() if vocab.lowercase else cand
        i = vocab.index.get(token)
        if i is None:
            raise RnngenError(f"candidate {cand!r} is not in the model's vocabulary")
        if i == vocab.eos or (i == vocab.unk and not allow_unk):
            raise RnngenError(f"candidate {cand!r} cannot fill a blank"
                              + ("" if i == vocab.eos else " (pass --allow-unk to allow it)"))
        out.append(i)
    if not out:
        raise RnngenError("no candidates given")
    return np.array(sorted(set(out)), dtype=np.int64)


def fill_lines(model: Model, vocab: Vocab, lines: list[str], top_k: int = 5, blank: str = "___",
               candidates: list[str] | None = None, allow_unk: bool = False,
               rescore: Model | None = None) -> list[FillResult]:
    """The ``top_k`` most probable fillers of each line's blank, in input order. A line that
    cannot be filled (no blank, several, nothing but the blank) gets a result with ``error``
    set. ``rescore``: a forward model (same vocabulary) re-ranking a bidirectional model's
    answer exactly."""
    if not blank:
        raise RnngenError("the blank marker must not be empty")
    if top_k < 1:
        raise RnngenError("top_k must be at least 1")
    if rescore is not None and (rescore.config.bidirectional or rescore.config.vocab_size != len(vocab)):
        raise RnngenError("rescoring needs a forward model with the same vocabulary")
    ids = allowed_ids(vocab, candidates, allow_unk)
    results, parts = [], []
    for line in lines:
        try:
            left, right = split_blank(line, blank, vocab.unit)
        except RnngenError as exc:
            results.append(FillResult(line, error=str(exc)))
            parts.append(None)
            continue
        results.append(FillResult(line, left=left, right=right))
        parts.append((vocab.encode_line(left)[0], vocab.encode_line(right)[0]))
    todo = [i for i, p in enumerate(parts) if p is not None]
    for i, scores in zip(todo, _scores(model, vocab, [parts[i] for i in todo], ids)):
        pool = ids
        if rescore is not None and model.config.bidirectional:
            pool = ids[np.argsort(-scores, kind="stable")[:max(top_k, RESCORE_POOL)]]
            scores = exact_scores(rescore, *parts[i], pool, vocab.eos)
        results[i].candidates = _top(scores, pool, top_k, vocab)
    return results


def _scores(model: Model, vocab: Vocab, contexts: list, ids: np.ndarray):
    """Log-scores of the tokens ``ids`` for each (left ids, right ids), up to a constant per line."""
    if model.config.bidirectional:
        return cloze_scores(model, contexts, ids, vocab.unk)
    return [exact_scores(model, left, right, ids, vocab.eos) for left, right in contexts]


def _top(scores: np.ndarray, ids: np.ndarray, k: int, vocab: Vocab) -> list[Candidate]:
    """The k best of ``ids`` by ``scores``, normalised over all of them."""
    logp = scores - np.logaddexp.reduce(scores)
    best = np.argsort(-logp, kind="stable")[:k]
    return [Candidate(vocab.tokens[ids[j]], float(np.exp(logp[j])), float(logp[j])) for j in best]


def cloze_scores(model: ClozeModel, contexts: list, ids: np.ndarray, filler: int) -> list[np.ndarray]:
    """log p(w | left, right) for w in ``ids`` from the cloze output at each line's blank,
    lines of one length side by side (the blank holds ``filler``: it is never read)."""
    lines = [np.concatenate((left, [filler], right)).astype(np.int32) for left, right in contexts]
    out: list[np.ndarray] = [np.zeros(0)] * len(lines)
    for group, batch in group_by_length(lines):
        top = model.line_tops(batch)
        rows = np.stack([top[len(contexts[i][0]), col] for col, i in enumerate(group)])
        logp = model.next_logprobs(rows)
        for col, i in enumerate(group):
            out[i] = logp[col, ids].astype(np.float64)
    return out


def left_scores(model: Model, left: np.ndarray, eos: int = 0):
    """log p(w | <eos> left) over the vocabulary (V,), and the state after the left context."""
    inputs = np.concatenate(([eos], left)).astype(np.int32)[:, None]
    top, _, state = model.hidden_forward(inputs, model.zero_state(1))
    bases = model.contexts(inputs[-1:], inputs[len(inputs) - 1 - model.history:-1])      # the last position's
    return model.next_logprobs(top[-1], None if bases is None else bases[-1]).reshape(-1).astype(np.float64), state


def exact_scores(model: Model, left: np.ndarray, right: np.ndarray, ids: np.ndarray, eos: int = 0) -> np.ndarray:
    """log p(<eos> left w right <eos>) under a forward model for each w in ``ids``, up to the
    left context's own log-probability, shared by all: the left context is read once."""
    first, state = left_scores(model, left, eos)
    targets_tail = np.concatenate((right, [eos])).astype(np.int32)
    read = np.concatenate(([eos], left)).astype(np.int32)                # inputs before the candidate
    before = read[max(0, len(read) - model.history):, None] if model.history else None
    jobs = []
    for a in range(0, len(ids), CANDIDATE_ROWS):          # one job: the output weights packed once
        block = ids[a:a + CANDIDATE_ROWS]
        inputs = np.empty((len(targets_tail), len(block)), dtype=np.int32)
        inputs[0] = block
        inputs[1:] = right[:, None]
        jobs.append((inputs, np.repeat(targets_tail[:, None], len(block), axis=1), np.repeat(state, len(block), axis=2),
                     None if before is None else np.repeat(before, len(block), axis=1)))
    return first[ids] + np.concatenate([lp.sum(axis=0) for lp in jobs_logprobs(model, jobs)])


def pseudo_log_likelihood(model: ClozeModel, vocab: Vocab, lines: list[str],
                          per_token: bool = False) -> list[SentenceScore]:
    """Per line: the sum over its tokens of log p(x_t | every other token), the token count
    (``<eos>`` not counted: it is never predicted), the out-of-vocabulary count and, with
    ``per_token``, each token's term."""
    if not model.config.bidirectional:
        raise RnngenError("the pseudo-log-likelihood needs a bidirectional model")
    encoded = [vocab.encode_line(line) for line in lines]
    lps = lines_logprobs(model, [ids for ids, _ in encoded])
    return [PseudoScore(line, float(lp.sum()), len(ids), oov,
                        [(vocab.tokens[t], float(v)) for t, v in zip(ids, lp)] if per_token else [])
            for line, (ids, oov), lp in zip(lines, encoded, lps)]


class PseudoScore(SentenceScore):
    """A line's pseudo-log-likelihood; its "perplexity" is exp(-PLL / tokens), 1 when empty."""

    @property
    def perplexity(self) -> float:
        return float(np.exp(-self.logprob / self.tokens)) if self.tokens else 1.0
