"""Training: minibatched truncated BPTT, validation, learning-rate halving, checkpoints.

The training stream (lines joined by ``<eos>``) is cut into ``batch_size`` contiguous
streams read side by side ``bptt`` steps at a time; the hidden state is carried from one
chunk to the next but gradients stop at chunk borders. After each epoch the validation
perplexity decides: a new best is kept (it is the model the checkpoint serves), no
improvement halves the learning rate, and ``patience`` such epochs in a row stop the run.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict

import numpy as np

from . import blas, checkpoint
from .checkpoint import Checkpoint
from .config import TrainConfig
from .errors import RnngenError
from .model import Model, ModelConfig
from .optim import clip_scale, global_norm, make_optimizer
from .score import stream_logprob
from .vocab import Vocab

PROGRESS_EVERY = 60.0   # seconds between progress lines when stderr is not a terminal


class TrainingInterrupted(Exception):
    """Raised after a SIGINT/SIGTERM once the resumable state has been saved."""

    def __init__(self, signum: int, where: str):
        super().__init__(where)
        self.signum = signum


MAX_RECOVERIES = 3      # divergences in a row (each halving the learning rate) before giving up


def batchify(ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the stream into ``batch_size`` contiguous rows: inputs and next-token targets as
    (B, L) views of ``ids``, so a corpus (maybe memory-mapped) is not copied; ``time_major``
    takes out the chunks."""
    L = (len(ids) - 1) // batch_size
    inputs = ids[: batch_size * L].reshape(batch_size, L)
    targets = ids[1: batch_size * L + 1].reshape(batch_size, L)
    return inputs, targets


def time_major(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Steps ``start:stop`` of (B, L) rows as the contiguous (T, B) int32 array a model reads."""
    return np.ascontiguousarray(rows[:, start:stop].T, dtype=np.int32)


# Ids a whole-stream pass takes at a time, so that it makes no copy of the (maybe memory-mapped) stream.
STREAM_PIECE = 1 << 22


def fingerprint(ids: np.ndarray) -> str:
    """Length and CRC-32 of the stream's bytes: ``--resume`` checks that the data is the same."""
    crc = 0
    for start in range(0, ids.size, STREAM_PIECE):
        crc = zlib.crc32(np.ascontiguousarray(ids[start:start + STREAM_PIECE]), crc)
    return f"{ids.size}:{crc:08x}"


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id occurs; np.bincount of the whole stream would make an int64 copy of it."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, ids.size, STREAM_PIECE):
        counts += np.bincount(ids[start:start + STREAM_PIECE], minlength=vocab_size)
    return counts


class _Signals:
    """First SIGINT/SIGTERM sets a flag (training stops at the chunk border and saves);
    a second one exits at once — the atomic checkpoint write keeps files intact."""

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.handle)
            except ValueError:          # not the main thread: no signal handling
                pass
        return self

    def handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ppl(nll: float, tokens: int) -> float:
    """exp(nll / tokens), inf rather than OverflowError for a model that is far off."""
    x = nll / max(tokens, 1)
    return math.exp(x) if x < 709 else math.inf


def _finite(*groups: dict) -> bool:
    return all(np.isfinite(v).all() for g in groups for v in g.values())


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train(train_ids: np.ndarray, valid_ids: np.ndarray | None, vocab: Vocab,
          model_config: ModelConfig | None, config: TrainConfig, output: str,
          resume: Checkpoint | None = None, log: Callable[[str], None] = _stderr,
          progress: bool = False, threads: int | None = None) -> Checkpoint:
    """Train and write ``output``; returns the final checkpoint (best model + resume state).

    With ``resume`` the model, vocabulary, optimiser state, position in the data, learning
    rate, RNG stream and history continue from that checkpoint; ``model_config`` is ignored.
    A NaN or infinite loss (or perplexity), gradient or weight sends training back to the
    last state it saved (or started from) with half the learning rate, up to MAX_RECOVERIES
    times in a row. ``threads`` is how many threads a step uses (:func:`blas.training_lanes`;
    None: chosen from the model size).
    """
    train_ids = np.ascontiguousarray(train_ids, dtype=np.int32)
    batch_size = min(config.batch_size, max(1, len(train_ids) - 1))
    if batch_size < config.batch_size:
        log(f"rnngen: corpus has only {len(train_ids)} tokens; using batch size {batch_size}")
        config.batch_size = batch_size
    if len(train_ids) < 2:
        raise RnngenError("the training corpus needs at least 2 tokens")
    inputs, targets = batchify(train_ids, config.batch_size)
    n_chunks = math.ceil(inputs.shape[1] / config.bptt)

    if resume is not None:
        model, best, history, progress_state = _restore(resume, config, train_ids, n_chunks)
        vocab = resume.vocab
    else:
        model_config = model_config.with_classes(token_counts(train_ids, model_config.vocab_size))
        model = Model.init(model_config, seed=config.seed)
        best = None
        history = []
        progress_state = {"epoch": 0, "chunk": 0, "step": 0, "lr": config.lr, "best_valid": None, "best_score": None,
                          "bad_epochs": 0, "epoch_nll": 0.0, "epoch_tokens": 0, "elapsed": 0.0,
                          "rng": np.random.default_rng(config.seed + 1).bit_generator.state,
                          "data": fingerprint(train_ids), "done": False}
    threads = threads or blas.auto_threads(model.config.hidden, model.config.vocab_size)
    lanes = blas.training_lanes(threads, model.config.softmax)
    optim = make_optimizer(config.optimizer, model.params)
    state = model.zero_state(config.batch_size)
    if resume is not None:
        optim.load_state({k[len("optim."):]: v for k, v in resume.resume.items() if k.startswith("optim.")},
                         progress_state["step"])
        state[...] = resume.resume["state"]
    params_bytes = sum(v.nbytes for v in model.params.values())
    checkpoint.check_writable(output, 2 * params_bytes + sum(v.nbytes for v in optim.state.values())
                              + state.nbytes + sum(len(t) + 4 for t in vocab.tokens) + (1 << 16))
    rng = np.random.default_rng()
    rng.bit_generator.state = progress_state["rng"]
    ps = progress_state
    ps["done"] = False
    good: dict = {}

    def snapshot() -> Checkpoint:
        ps["rng"] = rng.bit_generator.state
        resume_arrays = {f"param.{k}": v for k, v in model.params.items()}
        resume_arrays.update({f"optim.{k}": v for k, v in optim.state.items()})
        resume_arrays["state"] = state
        best_model = Model(model.config, best) if best is not None else model
        return Checkpoint(best_model, vocab, {**asdict(config), "progress": dict(ps)}, history, resume_arrays)

    def remember():
        """Keep a copy of the state just saved (or started from) to go back to on divergence."""
        good.update(params={k: v.copy() for k, v in model.params.items()},
                    optim={k: v.copy() for k, v in optim.state.items()}, state=state.copy(),
                    ps={**ps, "rng": rng.bit_generator.state}, history=len(history), best=best, failures=0)

    def save():
        checkpoint.save(output, snapshot())
        remember()

    def sound() -> bool:
        return _finite(model.params, optim.state, {"state": state})

    def recover(problem: str):
        """Go back to the last good state with the learning rate halved, or give up."""
        nonlocal state, best
        good["failures"] += 1
        if good["failures"] > MAX_RECOVERIES:
            raise RnngenError(f"training diverged ({problem}) again after halving the learning rate "
                              f"{MAX_RECOVERIES} times; try a lower --lr or a smaller --clip")
        for k, v in good["params"].items():
            model.params[k][...] = v
        for k, v in good["optim"].items():
            optim.state[k][...] = v
        state = good["state"].copy()
        ps.clear()
        ps.update(good["ps"])
        ps["lr"] *= 0.5 ** good["failures"]
        rng.bit_generator.state = ps["rng"]
        optim.steps = ps["step"]
        del history[good["history"]:]
        best = good["best"]
        log(f"rnngen: training diverged ({problem}); back to step {ps['step']} "
            f"with the learning rate halved to {ps['lr']:.4g}")

    def end_of_epoch(partial: bool):
        """Validate; keep the best model. Only whole epochs drive the learning-rate
        schedule, so a run stopped and resumed mid-epoch follows the same schedule."""
        nonlocal best
        train_ppl = _ppl(ps["epoch_nll"], ps["epoch_tokens"])
        valid_ppl = None
        if valid_ids is not None and len(valid_ids):
            with blas.numpy_threads(threads):
                logprob, count = stream_logprob(model, valid_ids)
            valid_ppl = _ppl(-logprob, count)
        score = valid_ppl if valid_ppl is not None else train_ppl
        entry = {"epoch": ps["epoch"] + 1, "partial": partial, "step": ps["step"],
                 "train_ppl": train_ppl, "valid_ppl": valid_ppl, "lr": ps["lr"],
                 "tokens_per_s": tok_count / max(train_time, 1e-9), "elapsed": ps["elapsed"]}
        history.append(entry)
        is_best = ps["best_score"] is None or score < ps["best_score"]
        if is_best:
            ps["best_score"] = score
            best = {k: v.copy() for k, v in model.params.items()}
        if not partial:
            improved = ps["best_valid"] is None or score < ps["best_valid"]
            if improved:
                ps["best_valid"] = score
                ps["bad_epochs"] = 0
            else:
                ps["bad_epochs"] += 1
            if not improved or (config.decay_after and ps["epoch"] + 1 >= config.decay_after):
                ps["lr"] *= config.lr_decay
        valid_txt = f"{valid_ppl:9.2f}" if valid_ppl is not None else "        -"
        log(f"epoch {ps['epoch'] + 1:3d}{'*' if partial else ' '} train ppl {train_ppl:9.2f}  "
            f"valid ppl {valid_txt}  lr {entry['lr']:.4g}  {entry['tokens_per_s']:7.0f} tok/s  "
            f"elapsed {_fmt_time(ps['elapsed'])}{'  (best)' if is_best else ''}")

    tok_count, train_time = 0, 0.0
    last_save = last_report = time.perf_counter()
    stop_reason = None
    bar = None
    remember()
    with _Signals() as signals, np.errstate(over="ignore", invalid="ignore"):   # divergence is handled
        while ps["epoch"] < config.epochs and stop_reason is None:
            tok_count, train_time = 0, 0.0                  # per-epoch throughput
            if ps["chunk"] == 0:
                state[...] = 0
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=n_chunks, initial=ps["chunk"], desc=f"epoch {ps['epoch'] + 1}",
                           unit="chunk", file=sys.stderr, leave=False, dynamic_ncols=True)
            while ps["chunk"] < n_chunks:
                t0 = time.perf_counter()
                start = ps["chunk"] * config.bptt
                x, y = time_major(inputs, start, start + config.bptt), time_major(targets, start, start + config.bptt)
                masks = model.dropout_masks(rng, *x.shape) if model.config.dropout > 0 else None
                nll, grads, new_state = model.loss_and_grads(x, y, state, masks, lanes)
                norm = global_norm(grads, lanes)
                if not (math.isfinite(norm) and _ppl(nll, x.size) < math.inf):
                    recover(f"loss {nll / x.size:.4g} per token, gradient norm {norm:.4g} at step {ps['step'] + 1}")
                    continue
                optim.step(model.params, grads, ps["lr"], clip_scale(norm, config.clip), lanes)
                state = new_state
                ps["chunk"] += 1
                ps["step"] += 1
                ps["epoch_nll"] += nll
                ps["epoch_tokens"] += x.size
                tok_count += x.size
                ps["elapsed"] += time.perf_counter() - t0
                train_time += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(ppl=f"{_ppl(ps['epoch_nll'], ps['epoch_tokens']):.2f}",
                                    tok_s=f"{tok_count / train_time:.0f}", refresh=False)
                elif time.perf_counter() - last_report >= PROGRESS_EVERY:     # no terminal: a log line
                    last_report = time.perf_counter()
                    log(f"epoch {ps['epoch'] + 1:3d}  {100 * ps['chunk'] / n_chunks:5.1f}%  "
                        f"train ppl {_ppl(ps['epoch_nll'], ps['epoch_tokens']):9.2f}  "
                        f"{tok_count / train_time:7.0f} tok/s  elapsed {_fmt_time(ps['elapsed'])}")
                if signals.received is not None:
                    if bar is not None:
                        bar.close()
                    if not sound():
                        recover(f"weights not finite after step {ps['step']}")
                    save()
                    raise TrainingInterrupted(signals.received,
                                              f"epoch {ps['epoch'] + 1}, step {ps['step']}")
                if config.max_steps and ps["step"] >= config.max_steps:
                    stop_reason = f"reached --max-steps {config.max_steps}"
                elif config.max_time and ps["elapsed"] >= config.max_time:
                    stop_reason = f"reached --max-time {config.max_time:g}s"
                if stop_reason:
                    break
                if config.checkpoint_every and time.perf_counter() - last_save >= config.checkpoint_every:
                    if not sound():
                        recover(f"weights not finite after step {ps['step']}")
                        continue
                    save()
                    last_save = time.perf_counter()
            if bar is not None:
                bar.close()
            if not sound():
                recover(f"weights not finite after step {ps['step']}")
                stop_reason = None
                continue
            partial = ps["chunk"] < n_chunks
            end_of_epoch(partial)
            if not partial:
                ps["epoch"] += 1
                ps["chunk"] = 0
                ps["epoch_nll"], ps["epoch_tokens"] = 0.0, 0
                if config.patience and ps["bad_epochs"] >= config.patience:
                    stop_reason = f"no improvement for {config.patience} epochs"
            save()
            last_save = time.perf_counter()
            if signals.received is not None and ps["epoch"] < config.epochs and stop_reason is None:
                raise TrainingInterrupted(signals.received, f"epoch {ps['epoch'] + 1}, step {ps['step']}")
    if stop_reason:
        log(f"rnngen: stopped: {stop_reason}")
    ps["done"] = ps["epoch"] >= config.epochs
    final = snapshot()
    checkpoint.save(output, final)
    return final


def _restore(ckpt: Checkpoint, config: TrainConfig, train_ids: np.ndarray, n_chunks: int):
    if ckpt.resume is None or "progress" not in ckpt.train:
        raise RnngenError("checkpoint has no training state to resume from")
    ps = dict(ckpt.train["progress"])
    if ps.get("data") != fingerprint(train_ids):
        raise RnngenError("--resume needs the same training corpus and vocabulary options as the original run")
    if ckpt.train.get("batch_size") != config.batch_size:
        raise RnngenError("--resume needs the same --batch-size as the original run")
    if ps["chunk"] and (ckpt.train.get("bptt") != config.bptt or ps["chunk"] > n_chunks):
        raise RnngenError("--resume in the middle of an epoch needs the same --bptt as the original run")
    model = Model(ckpt.model.config, {k[len("param."):]: v.copy() for k, v in ckpt.resume.items()
                                      if k.startswith("param.")})
    best = {k: v.copy() for k, v in ckpt.model.params.items()} if ps.get("best_score") is not None else None
    return model, best, list(ckpt.history), ps


def prepare_data(corpus_paths: list[str], valid_path: str | None = None, valid_fraction: float = 0.1,
                 unit: str = "word", lowercase: bool = False, vocab_size: int = 0, min_count: int = 1,
                 encoding_errors: str = "strict", vocab: Vocab | None = None,
                 log: Callable[[str], None] = _stderr):
    """Read the corpus files, hold out validation lines, build (or reuse) the vocabulary.

    Without ``valid_path`` the last ``valid_fraction`` of the lines is held out; a corpus
    too short for that trains without validation (and says so). Returns (vocab, train ids,
    valid ids or None). The vocabulary comes from the training lines only. The files are
    read a block at a time (see ``rnngen.corpus``); a long id stream is memory-mapped.
    """
    from .corpus import count_corpus, encode_files
    from .textio import TextFile

    if vocab_size < 0:
        raise RnngenError("--vocab-size must be 0 (no limit) or more")
    if min_count < 1:
        raise RnngenError("--min-count must be at least 1")
    if not 0 <= valid_fraction < 1:
        raise RnngenError("--valid-fraction must be in [0, 1)")
    with ExitStack() as opened:
        corpus = [opened.enter_context(TextFile(path, encoding_errors)) for path in corpus_paths]
        valid_file = opened.enter_context(TextFile(valid_path, encoding_errors)) if valid_path is not None else None
        n_lines = sum(text_file.lines for text_file in corpus)
        n_valid = 0
        if valid_file is None and valid_fraction > 0:
            n_valid = int(n_lines * valid_fraction)
            if n_valid == 0:
                log(f"rnngen: the corpus has only {n_lines} line{'s' if n_lines > 1 else ''}, too few to "
                    f"hold out {valid_fraction:g} for validation; training without (pass --valid FILE to validate)")
        counts: Counter[str] | None = Counter() if vocab is None else None     # a given vocabulary is kept
        if vocab is not None:
            unit, lowercase = vocab.unit, vocab.lowercase
        n_train, n_held_out = count_corpus(corpus, unit, lowercase, n_lines - n_valid, counts)
        if counts is not None:
            vocab = Vocab.from_counts(counts, unit=unit, lowercase=lowercase, max_size=vocab_size or None,
                                      min_count=min_count)
        ids = encode_files(corpus, vocab, n_train + n_held_out)
        train_ids, valid_ids = ids[:n_train], (ids[n_train:] if n_valid else None)
        if valid_file is not None:
            valid_ids = encode_files([valid_file], vocab)
    return vocab, train_ids, valid_ids
