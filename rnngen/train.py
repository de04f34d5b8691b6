"""Training: minibatched truncated BPTT, validation, learning-rate halving, checkpoints.

The training stream (lines joined by ``<eos>``) is cut into ``batch_size`` contiguous
streams read side by side ``bptt`` steps at a time; the hidden state is carried from one
chunk to the next but gradients stop at chunk borders. After each epoch the validation
perplexity decides: a new best is kept (it is the model the checkpoint serves), no
improvement halves the learning rate, and ``patience`` such epochs in a row stop the run.

Read from the top: :func:`train` is the loop; :func:`train_step` is one optimiser step on
one chunk; :class:`Progress` is where a run stands and :class:`Run` all that training
changes; :class:`Rollback` goes back to the last save when the loss stops being finite;
:class:`Checkpoints` writes the run to its file; :class:`Reporter` shows each step's and
each epoch's figures.
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
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np

from . import blas, checkpoint
from . import distributed as dist
from .budget import Deadline, Speed, validation_seconds, write_seconds
from .checkpoint import Checkpoint
from .cloze import LineBatches, cloze_stream_logprob, init_model
from .config import TrainConfig, known_fields
from .corpus import count_corpus, encode_files
from .errors import RnngenError
from .lanes import SERIAL, Lanes, training
from .model import Model, ModelConfig
from .optim import Optimizer, clip_scale, global_norm, make_optimizer
from .runlog import RunLog
from .score import stream_logprob
from .textio import TextFile
from .vocab import Vocab

# TrainConfig's home is rnngen.config; it stays importable from here.
__all__ = ["Deadline", "TrainConfig", "TrainingInterrupted", "measure_speed", "prepare_data", "train", "train_step"]

PROGRESS_EVERY = 60.0   # seconds between progress lines when stderr is not a terminal
MAX_RECOVERIES = 3      # divergences in a row (each halving the learning rate) before giving up


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(train_ids: np.ndarray, valid_ids: np.ndarray | None, vocab: Vocab,
          model_config: ModelConfig | None, config: TrainConfig, output: str,
          resume: Checkpoint | None = None, log: Callable[[str], None] = _stderr,
          progress: bool = False, threads: int | None = None, world: dist.World | None = None,
          deadline: Deadline | None = None) -> Checkpoint:
    """Train and write ``output``; returns the final checkpoint (best model + resume state).

    With ``resume`` the model, vocabulary, optimiser state, position in the data, learning
    rate, RNG stream and history continue from that checkpoint; ``model_config`` is ignored.
    A NaN or infinite loss (or perplexity), gradient or weight sends training back to the
    last state it saved (or started from) with half the learning rate, up to MAX_RECOVERIES
    times in a row. ``threads`` is how many threads a step uses (:func:`rnngen.lanes.training_lanes`;
    None: chosen from the model size). ``config`` is left as it is, and so are the BLAS
    thread counts once this returns. With ``config.log_file`` the run's metrics go to that
    log as it trains (:mod:`rnngen.runlog`). ``world`` (default :func:`rnngen.distributed.world`)
    is the job this process is a rank of: each rank trains its share of the batch's streams
    and rank 0 alone validates and writes ``output`` and the metrics log.

    ``deadline`` (:class:`rnngen.budget.Deadline`, e.g. ``Deadline.after(600)``) is a wall-clock
    budget: training stops early enough that the last validation and save end before it
    (``config.max_time`` counts training seconds alone, summed over resumed runs).
    """
    world = world or dist.world()
    train_ids = np.ascontiguousarray(train_ids, dtype=np.int32)
    config = _fit_batch_size(config, len(train_ids), log)
    data = _training_data(train_ids, config, resume.model.config if resume is not None else model_config, world)
    if resume is not None:
        run, vocab = _resumed_run(resume, config, train_ids, data.count), resume.vocab
    else:
        run = _new_run(model_config, config, train_ids)
    run.state = _rank_state(world, run, config, log)
    threads = threads or min(world.threads(), blas.auto_threads(run.model.config.hidden, run.model.config.vocab_size))
    saved = Checkpoints(output, vocab, config, run, log, world)
    reporter = Reporter(log, progress, data.count, RunLog(config.log_file if world.root else "", config.log_every,
                                                          data.count, run.progress, resume is not None))
    saved.after_save, saved.rollback.after_restore = reporter.saved, reporter.rolled_back
    if deadline is not None and world.root:        # the reserve, before any validation or save has run
        deadline.validation = validation_seconds(lambda ids: validate(run.model, ids, threads), valid_ids)
        deadline.write = write_seconds(saved.nbytes)
    stop = None
    with (training(threads, run.model.config.softmax) as lanes, _Signals() as signals, reporter.metrics,
          np.errstate(over="ignore", invalid="ignore")):                     # divergence is handled
        while run.progress.epoch < config.epochs and stop is None:
            stop = _train_epoch(run, data, config, lanes, saved, reporter, signals, world, deadline)
            if not saved.ensure_finite(run):
                stop = None
                continue
            started = time.perf_counter()
            valid_ppl = world.on_root(validate, run.model, valid_ids, threads)
            if deadline is not None and valid_ids is not None:
                deadline.validation = time.perf_counter() - started      # the real time, from now on
            entry, is_best = _close_epoch(run, config, valid_ppl, reporter.tokens_per_s, data.count)
            reporter.epoch(entry, is_best, run.progress)
            if not entry["partial"] and config.patience and run.progress.bad_epochs >= config.patience:
                stop = f"no improvement for {config.patience} epochs"
            saved.save(run)
            if deadline is not None:
                deadline.write = saved.write_seconds
                if stop is None and run.progress.epoch < config.epochs and world.on_root(deadline.reached):
                    stop = deadline.why()
            if world.any(signals.received is not None) and run.progress.epoch < config.epochs and stop is None:
                reporter.stop(run.progress)
                raise TrainingInterrupted(signals.received or signal.SIGINT, run.progress.where())
        reporter.stop(run.progress)
    if stop:
        log(f"rnngen: stopped: {stop}")
    run.progress.done = run.progress.epoch >= config.epochs
    return saved.write(run)


def _training_data(train_ids: np.ndarray, config: TrainConfig, model_config: ModelConfig, world: dist.World):
    """The chunks of the stream (a language model), or batches of whole lines (a cloze model,
    :class:`rnngen.cloze.LineBatches`, lines longer than ``bptt`` cut into windows)."""
    if model_config.direct_order and world.size > 1:
        raise RnngenError("n-gram features (--direct-order) train in one process: their hashed weights "
                          "are not shared over MPI ranks")
    if model_config.bidirectional:
        if world.size > 1:
            raise RnngenError("a bidirectional model trains in one process: its batches of whole lines "
                              "are not split over MPI ranks")
        return LineBatches(train_ids, config.batch_size, config.bptt, config.seed)
    return Chunks(*batchify(train_ids, config.batch_size), config.bptt)


def _train_epoch(run: Run, data: Chunks | LineBatches, config: TrainConfig, lanes: Lanes, saved: Checkpoints,
                 reporter: Reporter, signals: _Signals, world: dist.World = dist.SINGLE,
                 deadline: Deadline | None = None) -> str | None:
    """Train chunk after chunk to the end of the epoch; returns why training stops before it,
    or None. A step whose loss is not finite rolls the run back to the last save (so does a
    periodic save whose weights are not); a signal saves the run and raises TrainingInterrupted.
    In a job of several ranks, these decisions are rank 0's (see :class:`_Shared`)."""
    if run.progress.chunk == 0:
        run.state[...] = 0
    reporter.start_epoch(run.progress)
    shared = _Shared(world, deadline)
    stop = None
    while run.progress.chunk < data.count and stop is None:
        p = run.progress
        t0 = time.perf_counter()
        x, y = data.chunk(p.chunk)
        masks = run.model.dropout_masks(run.rng, *x.shape) if run.model.config.dropout > 0 else None
        lr = p.lr * min(1.0, (p.step + 1) / config.warmup) if config.warmup else p.lr     # warm-up: linear
        step = train_step(run.model, run.optim, x, y, run.state, lr, config.clip, masks, lanes, world,
                          shared.controls(signals, saved), data.before(p.chunk, run.model.history),
                          config.direct_lr * lr / config.lr)
        if not step.finite:
            saved.rollback.restore(run, f"loss {step.nll / x.size:.4g} per token, "
                                        f"gradient norm {step.norm:.4g} at step {p.step + 1}")
            continue
        run.state = step.state
        seconds = time.perf_counter() - t0
        p.advance(step.nll, x.size, shared.seconds(step, seconds))
        reporter.step(p, step, x.size, seconds)
        if shared.interrupted(step, signals):
            reporter.close()
            saved.ensure_finite(run)
            reporter.stop(run.progress)
            saved.save(run)
            raise TrainingInterrupted(signals.received or signal.SIGINT, run.progress.where())
        stop = _limit_reached(config, p) or shared.deadline(step, seconds)
        if stop is None and shared.save_due(step, saved) and saved.ensure_finite(run):
            saved.save(run)
    reporter.close()
    return stop


class Step(NamedTuple):
    """What one training step gives the loop."""

    nll: float              # summed negative log-likelihood of the chunk's targets
    norm: float             # global norm of the gradients, before clipping
    state: np.ndarray       # the recurrent state after the chunk: the next chunk starts from it
    finite: bool            # False: the loss or a gradient is NaN or infinite; no update was made
    controls: np.ndarray | None = None      # the control values added up with the gradients (_Shared)


def train_step(model: Model, optim: Optimizer, x: np.ndarray, y: np.ndarray, state: np.ndarray, lr: float,
               clip: float, masks: list[np.ndarray] | None = None, lanes: Lanes = SERIAL,
               world: dist.World = dist.SINGLE, controls: np.ndarray | None = None,
               before: np.ndarray | None = None, direct_lr: float = 0.0) -> Step:
    """One step of truncated BPTT on a chunk: inputs ``x`` and targets ``y`` (token ids,
    (T, B)) from the recurrent ``state``; the gradients, their global norm, the clipping
    factor that brings it down to ``clip`` (0: none), and the optimiser's update at learning
    rate ``lr``. A loss or gradient that is not finite would spoil the weights: then the
    update is not made and the result says so (``finite`` False). ``masks`` are dropout
    masks (:meth:`Model.dropout_masks`) or None; ``lanes`` spreads the work over threads.

    In a job of several ranks (``world``), ``x``, ``y`` and ``masks`` are the global batch's
    and ``state`` this rank's streams' (:meth:`World.part`): the rank computes the gradients
    of its streams, one all-reduce adds them up with ``controls``, and every rank then takes
    the same norm and makes the same update (:func:`rnngen.distributed.reduce_step`).

    With n-gram features, ``before`` holds the inputs before the chunk (:meth:`Model.contexts`)
    and their hashed weights take an SGD step of ``direct_lr`` per token, apart from the
    optimiser and the clipping (:mod:`rnngen.maxent`)."""
    if world.size > 1:
        part = world.part(x.shape[1])
        nll, grads, new_state = model.loss_and_grads(
            np.ascontiguousarray(x[:, part]), np.ascontiguousarray(y[:, part]), state,
            None if masks is None else [np.ascontiguousarray(m[:, part]) for m in masks], lanes, batch=x.shape[1])
        nll, grads, controls = dist.reduce_step(world, nll, grads, x, controls)
    else:
        nll, grads, new_state = model.loss_and_grads(x, y, state, masks, lanes, before=before)
    hashed = grads.pop("direct", None)
    norm = global_norm(grads, lanes)
    finite = math.isfinite(norm) and _ppl(nll, x.size) < math.inf
    if finite:
        optim.step(model.params, grads, lr, clip_scale(norm, clip), lanes)
        if hashed is not None:
            hashed.sgd(model.params["direct"], direct_lr * x.shape[1])     # gradients are per batch: lr per token
    return Step(nll, norm, new_state, finite, controls)


def _limit_reached(config: TrainConfig, p: Progress) -> str | None:
    """Why this invocation stops here (--max-steps, --max-time), or None."""
    if config.max_steps and p.step >= config.max_steps:
        return f"reached --max-steps {config.max_steps}"
    if config.max_time and p.elapsed >= config.max_time:
        return f"reached --max-time {config.max_time:g}s"
    return None


def validate(model: Model, valid_ids: np.ndarray | None, threads: int) -> float | None:
    """Perplexity of the validation stream (batch 1, state carried), or None without one; a
    cloze model's is the cloze perplexity of the validation lines (:mod:`rnngen.cloze`)."""
    if valid_ids is None or not len(valid_ids):
        return None
    with blas.numpy_threads(threads):
        logprob, count = (cloze_stream_logprob if model.config.bidirectional else stream_logprob)(model, valid_ids)
    return _ppl(-logprob, count)


def _close_epoch(run: Run, config: TrainConfig, valid_ppl: float | None, tokens_per_s: float,
                 n_chunks: int) -> tuple[dict, bool]:
    """Record the epoch (or the part of it trained: ``partial``) in the history and keep the
    best model. A whole epoch then drives the learning-rate schedule and the run moves on to
    the next; only whole epochs do, so a run stopped and resumed mid-epoch follows the same
    schedule. Returns the history entry and whether the model is the best so far."""
    p = run.progress
    partial = p.chunk < n_chunks
    train_ppl = _ppl(p.epoch_nll, p.epoch_tokens)
    score = valid_ppl if valid_ppl is not None else train_ppl
    entry = {"epoch": p.epoch + 1, "partial": partial, "step": p.step, "train_ppl": train_ppl,
             "valid_ppl": valid_ppl, "lr": p.lr, "tokens_per_s": tokens_per_s, "elapsed": p.elapsed,
             "tokens": p.tokens}
    run.history.append(entry)
    is_best = p.best_score is None or score < p.best_score
    if is_best:
        p.best_score = score
        run.best = {k: v.copy() for k, v in run.model.params.items()}
    if not partial:
        improved = p.best_valid is None or score < p.best_valid
        if improved:
            p.best_valid, p.bad_epochs = score, 0
        else:
            p.bad_epochs += 1
        if not improved or (config.decay_after and p.epoch + 1 >= config.decay_after):
            p.lr *= config.lr_decay
        p.epoch, p.chunk, p.epoch_nll, p.epoch_tokens = p.epoch + 1, 0, 0.0, 0
    return entry, is_best


@dataclass
class Progress:
    """Where a run stands. Saved as the checkpoint's ``train.progress``, under these names
    (checkpoints written before this class resume too), for ``--resume`` to continue."""

    epoch: int = 0                  # whole epochs trained
    chunk: int = 0                  # chunks of this epoch trained
    step: int = 0                   # optimiser steps taken
    lr: float = 0.0                 # the learning rate now
    best_valid: float | None = None     # best score at a whole epoch's end (the schedule's)
    best_score: float | None = None     # best score at any epoch's end (the best model's)
    bad_epochs: int = 0             # whole epochs in a row without a better score
    epoch_nll: float = 0.0          # this epoch's summed loss and tokens, so far
    epoch_tokens: int = 0
    elapsed: float = 0.0            # seconds of training
    rng: dict = field(default_factory=dict)     # the dropout RNG's state when last saved
    data: str = ""                  # the training stream's fingerprint
    done: bool = False              # every epoch trained
    tokens: int = 0                 # training tokens processed (older checkpoints lack it: see _resumed_run)

    @classmethod
    def from_json(cls, data: dict) -> Progress:
        return cls(**known_fields(cls, data))

    def advance(self, nll: float, tokens: int, seconds: float) -> None:
        """Count one step on a chunk of ``tokens`` tokens that took ``seconds``."""
        self.chunk += 1
        self.step += 1
        self.tokens += tokens
        self.epoch_nll += nll
        self.epoch_tokens += tokens
        self.elapsed += seconds

    def where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step}"


@dataclass
class Run:
    """Everything training changes; a checkpoint saves all of it for ``--resume``."""

    model: Model
    optim: Optimizer
    state: np.ndarray                   # the recurrent state carried into the next chunk
    rng: np.random.Generator            # draws the dropout masks
    progress: Progress
    history: list = field(default_factory=list)     # an entry per epoch's end (see _close_epoch)
    best: dict | None = None            # the best model's parameters; None: the current ones

    def finite(self) -> bool:
        """Are the weights, the optimiser's state and the recurrent state all finite?"""
        groups = (self.model.params, self.optim.state, {"state": self.state})
        return all(np.isfinite(v).all() for g in groups for v in g.values())

    def checkpoint(self, vocab: Vocab, config: TrainConfig, state: np.ndarray | None = None) -> Checkpoint:
        """The best model, and what --resume continues from; ``state``: the whole batch's
        recurrent state, where ``self.state`` holds only this rank's streams."""
        self.progress.rng = self.rng.bit_generator.state
        arrays = {f"param.{k}": v for k, v in self.model.params.items()}
        arrays.update({f"optim.{k}": v for k, v in self.optim.state.items()})
        arrays["state"] = self.state if state is None else state
        best = type(self.model)(self.model.config, self.best) if self.best is not None else self.model
        return Checkpoint(best, vocab, {**asdict(config), "progress": asdict(self.progress)}, self.history, arrays)


class Rollback:
    """A copy of the run as last saved (or started), to go back to when the loss, a gradient
    or a weight stops being finite: with the learning rate halved, once more at each
    divergence, up to MAX_RECOVERIES times in a row (each save starts the count again)."""

    def __init__(self, run: Run, log: Callable[[str], None]):
        self.log = log
        self.after_restore: Callable[[Run], None] = lambda run: None     # told once the run is back
        self.keep(run)

    def keep(self, run: Run) -> None:
        self.params = {k: v.copy() for k, v in run.model.params.items()}
        self.optim = {k: v.copy() for k, v in run.optim.state.items()}
        self.state = run.state.copy()
        self.progress = replace(run.progress, rng=run.rng.bit_generator.state)
        self.history = len(run.history)
        self.best = run.best
        self.failures = 0

    def restore(self, run: Run, problem: str) -> None:
        """Put the kept copy back into ``run``, or give up after too many tries."""
        self.failures += 1
        if self.failures > MAX_RECOVERIES:
            raise RnngenError(f"training diverged ({problem}) again after halving the learning rate "
                              f"{MAX_RECOVERIES} times; try a lower --lr or a smaller --clip")
        for k, v in self.params.items():
            run.model.params[k][...] = v            # in place: some parameters are views of one array
        for k, v in self.optim.items():
            run.optim.state[k][...] = v
        run.optim.steps = self.progress.step
        run.state = self.state.copy()
        run.progress = replace(self.progress, lr=self.progress.lr * 0.5 ** self.failures)
        run.rng.bit_generator.state = self.progress.rng
        del run.history[self.history:]
        run.best = self.best
        self.log(f"rnngen: training diverged ({problem}); back to step {run.progress.step} "
                 f"with the learning rate halved to {run.progress.lr:.4g}")
        self.after_restore(run)


class Checkpoints:
    """Writes the run to ``output`` at each epoch's end and every ``checkpoint_every``
    seconds, atomically (:func:`rnngen.checkpoint.save`); each save is then the state that
    ``rollback`` goes back to. Checks first that the folder takes a file of that size."""

    def __init__(self, output: str, vocab: Vocab, config: TrainConfig, run: Run, log: Callable[[str], None],
                 world: dist.World = dist.SINGLE):
        self.nbytes = _checkpoint_bytes(run, sum(len(t) + 4 for t in vocab.tokens))
        checkpoint.check_writable(output, self.nbytes)
        self.output, self.vocab, self.config, self.world = output, vocab, config, world
        self.rollback = Rollback(run, log)
        self.last_save = time.perf_counter()
        self.after_save: Callable[[Run], None] = lambda run: None        # told after each save
        self.write_seconds = 0.0        # the last write's time (rank 0's), for the deadline's reserve

    def due(self) -> bool:
        """Is a periodic save due?"""
        every = self.config.checkpoint_every
        return bool(every) and time.perf_counter() - self.last_save >= every

    def ensure_finite(self, run: Run) -> bool:
        """True if the run's weights and states are finite (on every rank); else roll back
        and say False."""
        if self.world.agree(run.finite()):
            return True
        self.rollback.restore(run, f"weights not finite after step {run.progress.step}")
        return False

    def save(self, run: Run) -> None:
        self.write(run)
        self.rollback.keep(run)
        self.last_save = time.perf_counter()
        self.after_save(run)

    def write(self, run: Run) -> Checkpoint:
        """Save the run (rank 0 alone, with the whole batch's state) and return it."""
        if self.world.size == 1:
            ckpt = run.checkpoint(self.vocab, self.config)
        else:
            ckpt = run.checkpoint(self.vocab, self.config, self.world.gather(run.state, axis=2))
        if self.world.root:
            started = time.perf_counter()
            checkpoint.save(self.output, ckpt)
            self.write_seconds = time.perf_counter() - started
        return ckpt


def _checkpoint_bytes(run: Run, vocab_bytes: int) -> int:
    """About the size of the run's checkpoint: best and current weights, optimiser and state,
    the vocabulary's ``vocab_bytes`` and the metadata."""
    params = sum(v.nbytes for v in run.model.params.values())
    return 2 * params + sum(v.nbytes for v in run.optim.state.values()) + run.state.nbytes + vocab_bytes + (1 << 16)


class Reporter:
    """What a run shows: on a terminal a progress bar, else a line every PROGRESS_EVERY
    seconds; a line at each epoch's end; and the records of the metrics log (``metrics``).
    Every step's figures (:meth:`step`) and every epoch's (:meth:`epoch`) pass through here,
    and so do the saves, rollbacks and the stop that the metrics log records."""

    def __init__(self, log: Callable[[str], None], bar: bool, n_chunks: int, metrics: RunLog):
        self.log, self.use_bar, self.n_chunks, self.metrics = log, bar, n_chunks, metrics
        self.bar = None
        self.tokens, self.seconds = 0, 0.0          # this epoch's, for its throughput
        self.last_line = time.perf_counter()

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def start_epoch(self, p: Progress) -> None:
        self.tokens, self.seconds = 0, 0.0
        if self.use_bar:
            # Imported here: only a terminal shows the bar, and a run logging to a file never loads tqdm.
            from tqdm import tqdm

            self.bar = tqdm(total=self.n_chunks, initial=p.chunk, desc=f"epoch {p.epoch + 1}",
                            unit="chunk", file=sys.stderr, leave=False, dynamic_ncols=True)

    def step(self, p: Progress, step: Step, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        train_ppl = _ppl(p.epoch_nll, p.epoch_tokens)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ppl=f"{train_ppl:.2f}", tok_s=f"{self.tokens_per_s:.0f}", refresh=False)
        elif time.perf_counter() - self.last_line >= PROGRESS_EVERY:
            self.last_line = time.perf_counter()
            self.log(f"epoch {p.epoch + 1:3d}  {100 * p.chunk / self.n_chunks:5.1f}%  train ppl {train_ppl:9.2f}  "
                     f"{self.tokens_per_s:7.0f} tok/s  elapsed {_fmt_time(p.elapsed)}")
        if self.metrics.due():
            self.metrics.write(p, (), self.tokens_per_s)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def epoch(self, entry: dict, is_best: bool, p: Progress) -> None:
        """The history ``entry`` of an epoch just closed; ``p`` is the progress after it."""
        valid = f"{entry['valid_ppl']:9.2f}" if entry["valid_ppl"] is not None else "        -"
        self.log(f"epoch {entry['epoch']:3d}{'*' if entry['partial'] else ' '} train ppl {entry['train_ppl']:9.2f}  "
                 f"valid ppl {valid}  lr {entry['lr']:.4g}  {entry['tokens_per_s']:7.0f} tok/s  "
                 f"elapsed {_fmt_time(entry['elapsed'])}{'  (best)' if is_best else ''}")
        self.metrics.epoch(entry, is_best, p)

    def saved(self, run: Run) -> None:
        self.metrics.saved(run.progress, self.tokens_per_s if self.tokens else None)

    def rolled_back(self, run: Run) -> None:
        self.metrics.rollback(run.progress)

    def stop(self, p: Progress) -> None:
        """Training stops at ``p`` (finished, a limit, a signal), with a checkpoint of it."""
        self.metrics.stop(p, self.tokens_per_s if self.tokens else None)


class _Shared:
    """What the ranks of a job decide alike after each step, from the control values that
    ride along with its all-reduce (:func:`rnngen.distributed.reduce_step`): whether a rank
    got a signal, whether rank 0 finds a periodic save due, and the seconds the step counts
    (rank 0's time between its all-reduces, so that --max-time stops every rank at the same
    step), and whether the step ends at the ``deadline``. A single process decides on its own
    figures, as they stand after the step."""

    def __init__(self, world: dist.World, deadline: Deadline | None = None):
        self.world, self.budget = world, deadline
        self.lap = time.perf_counter()

    def controls(self, signals: _Signals, saved: Checkpoints) -> np.ndarray | None:
        if self.world.size == 1:
            return None
        controls = np.zeros(dist.CONTROLS)
        controls[dist.SIGNAL] = signals.received is not None
        if self.world.root:
            now = time.perf_counter()
            controls[dist.SAVE_DUE] = saved.due()
            controls[dist.SECONDS], self.lap = now - self.lap, now
            # Decided before the step: stop after it if the next would run into the reserve.
            controls[dist.DEADLINE] = self.budget is not None and self.budget.reached(2 * controls[dist.SECONDS])
        return controls

    def seconds(self, step: Step, own: float) -> float:
        return own if step.controls is None else float(step.controls[dist.SECONDS])

    def deadline(self, step: Step, own: float) -> str | None:
        """Why training stops at the deadline after this step (the next would run into the reserve), or None."""
        if self.budget is None:
            return None
        reached = self.budget.reached(own) if step.controls is None else step.controls[dist.DEADLINE] > 0
        return self.budget.why() if reached else None

    def interrupted(self, step: Step, signals: _Signals) -> bool:
        return signals.received is not None if step.controls is None else step.controls[dist.SIGNAL] > 0

    def save_due(self, step: Step, saved: Checkpoints) -> bool:
        return saved.due() if step.controls is None else step.controls[dist.SAVE_DUE] > 0


class TrainingInterrupted(Exception):
    """Raised after a SIGINT/SIGTERM once the resumable state has been saved."""

    def __init__(self, signum: int, where: str):
        super().__init__(where)
        self.signum = signum


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


# --- starting a run -------------------------------------------------------------------

def _fit_batch_size(config: TrainConfig, n_tokens: int, log: Callable[[str], None]) -> TrainConfig:
    """``config``, or a copy of it with a batch size that a corpus this short can fill."""
    batch_size = min(config.batch_size, max(1, n_tokens - 1))
    if batch_size < config.batch_size:
        log(f"rnngen: corpus has only {n_tokens} tokens; using batch size {batch_size}")
        config = replace(config, batch_size=batch_size)
    if n_tokens < 2:
        raise RnngenError("the training corpus needs at least 2 tokens")
    return config


def _new_run(model_config: ModelConfig, config: TrainConfig, train_ids: np.ndarray) -> Run:
    counts = token_counts(train_ids, model_config.vocab_size)
    model_config = model_config.with_classes(counts).with_tree(counts).with_direct_size(len(train_ids))
    model = init_model(model_config, seed=config.seed)
    return Run(model, make_optimizer(config.optimizer, model.params), model.zero_state(config.batch_size),
               np.random.default_rng(config.seed + 1), Progress(lr=config.lr, data=fingerprint(train_ids)))


def _rank_state(world: dist.World, run: Run, config: TrainConfig, log: Callable[[str], None]) -> np.ndarray:
    """This rank's streams' share of the run's recurrent state (all of it in one process),
    once it is clear that every rank trains on the same data."""
    if world.size == 1:
        return run.state
    if config.batch_size < world.size:
        raise RnngenError(f"--batch-size {config.batch_size} gives fewer streams than the job's {world.size} ranks")
    if world.bcast(run.progress.data) != run.progress.data:
        raise RnngenError("this rank read other training data than rank 0 (the ranks must see the same "
                          "corpus and vocabulary options)")
    log(f"rnngen: {world.size} ranks, {config.batch_size} streams each step, "
        f"{config.batch_size // world.size}-{-(-config.batch_size // world.size)} per rank")
    return np.ascontiguousarray(run.state[:, :, world.part(config.batch_size)])


def _resumed_run(ckpt: Checkpoint, config: TrainConfig, train_ids: np.ndarray, n_chunks: int) -> Run:
    """The run saved in ``ckpt``, once it is clear that it continues on the same data."""
    if ckpt.resume is None or "progress" not in ckpt.train:
        raise RnngenError("checkpoint has no training state to resume from")
    progress = Progress.from_json(ckpt.train["progress"])
    if progress.data != fingerprint(train_ids):
        raise RnngenError("--resume needs the same training corpus and vocabulary options as the original run")
    if ckpt.train.get("batch_size") != config.batch_size:
        raise RnngenError("--resume needs the same --batch-size as the original run")
    if progress.chunk and (ckpt.train.get("bptt") != config.bptt or progress.chunk > n_chunks):
        raise RnngenError("--resume in the middle of an epoch needs the same --bptt as the original run")
    model = type(ckpt.model)(ckpt.model.config, {k: v.copy() for k, v in _under(ckpt.resume, "param.").items()})
    optim = make_optimizer(config.optimizer, model.params)
    optim.load_state(_under(ckpt.resume, "optim."), progress.step)
    state = model.zero_state(config.batch_size)
    state[...] = ckpt.resume["state"]
    rng = np.random.default_rng()
    rng.bit_generator.state = progress.rng
    progress.done = False
    if "tokens" not in ckpt.train["progress"]:      # saved before progress counted them
        progress.tokens = _tokens_trained(progress, config.batch_size, config.bptt, len(train_ids))
    best = {k: v.copy() for k, v in ckpt.model.params.items()} if progress.best_score is not None else None
    return Run(model, optim, state, rng, progress, list(ckpt.history), best)


def _tokens_trained(p: Progress, batch_size: int, bptt: int, n_ids: int) -> int:
    """The training tokens a run at ``p`` has processed: its whole epochs, each the batch's
    rows of ``(n_ids - 1) // batch_size`` steps, and the chunks of this one."""
    row = (n_ids - 1) // batch_size
    return batch_size * (p.epoch * row + min(p.chunk * bptt, row))


def _under(arrays: dict, prefix: str) -> dict:
    """The arrays whose names start with ``prefix``, under the rest of their names."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# --- the data ---------------------------------------------------------------------------

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


class Chunks(NamedTuple):
    """Inputs and targets from :func:`batchify`, read ``bptt`` steps (a chunk) at a time."""

    inputs: np.ndarray
    targets: np.ndarray
    bptt: int

    @property
    def count(self) -> int:
        """Chunks in an epoch, the last one maybe shorter."""
        return math.ceil(self.inputs.shape[1] / self.bptt)

    def chunk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``i``'s inputs and targets, (T, B) each."""
        start, stop = i * self.bptt, (i + 1) * self.bptt
        return time_major(self.inputs, start, stop), time_major(self.targets, start, stop)

    def before(self, i: int, n: int) -> np.ndarray | None:
        """The ``n`` inputs before chunk ``i`` (n, B), oldest first (fewer near the rows' starts,
        where :func:`rnngen.maxent.contexts` reads <eos>): what the n-gram features of its
        first steps read. None when n is 0."""
        if n == 0:
            return None
        start = i * self.bptt
        return time_major(self.inputs, max(0, start - n), start)


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


def _ppl(nll: float, tokens: int) -> float:
    """exp(nll / tokens), inf rather than OverflowError for a model that is far off."""
    x = nll / max(tokens, 1)
    return math.exp(x) if x < 709 else math.inf


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


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


# --- measuring, for a time budget (rnngen.budget) -------------------------------------------

MEASURE_SECONDS = 0.3   # timed steps of a candidate, after its warm-up step
MEASURE_STEPS = (2, 40)     # at least, at most, after the warm-up
WARMUP_STEPS = 2            # the first compiles, the second still allocates


def measure_speed(model_config: ModelConfig, config: TrainConfig, train_ids: np.ndarray,
                  valid_ids: np.ndarray | None, threads: int | None = None,
                  seconds: float = MEASURE_SECONDS) -> Speed:
    """This model's training speed here: warm-up steps (they compile), then steps on the start
    of the stream for ``seconds``, with ``threads``, or, when None, with one thread and with
    all cores, keeping the faster (the speed choice is made by measuring, on this machine);
    and the expected times of a validation (:func:`rnngen.budget.validation_seconds`) and of
    a checkpoint write."""
    started = time.perf_counter()
    head = np.ascontiguousarray(train_ids[:config.batch_size * config.bptt * 8 + 1], dtype=np.int32)
    config = _fit_batch_size(config, len(head), lambda msg: None)
    counts = token_counts(train_ids, model_config.vocab_size)
    model_config = model_config.with_classes(counts).with_tree(counts)      # the run's classes and tree, not the head's
    run = _new_run(model_config, config, head)
    data = Chunks(*batchify(head, config.batch_size), config.bptt)
    counts = [threads] if threads else sorted({1, dist.world().threads()})
    rates = {n: _step_rate(run, data, config, n, WARMUP_STEPS if n == counts[0] else 1, seconds) for n in counts}
    threads = max(rates, key=rates.get)
    validation = validation_seconds(lambda ids: validate(run.model, ids, threads), valid_ids)
    write = write_seconds(_checkpoint_bytes(run, 8 * model_config.vocab_size))      # about 4 bytes a token
    return Speed(rates[threads], validation, write, time.perf_counter() - started, threads)


def _step_rate(run: Run, data: Chunks, config: TrainConfig, threads: int, warmup: int, seconds: float) -> float:
    """Training tokens/s of ``run``'s model on ``threads``: the median of steps timed after
    ``warmup`` ones (the first compiles, the next still allocate), for ``seconds``."""
    rates, timed, steps = [], 0.0, 0
    with training(threads, run.model.config.softmax) as lanes, np.errstate(over="ignore", invalid="ignore"):
        while steps < warmup + MEASURE_STEPS[0] or (timed < seconds and steps < warmup + MEASURE_STEPS[1]):
            i = steps % data.count
            x, y = data.chunk(i)
            masks = run.model.dropout_masks(run.rng, *x.shape) if run.model.config.dropout > 0 else None
            t0 = time.perf_counter()
            run.state = train_step(run.model, run.optim, x, y, run.state, config.lr, config.clip, masks, lanes,
                                   before=data.before(i, run.model.history), direct_lr=config.direct_lr).state
            if steps >= warmup:
                rates.append(x.size / (time.perf_counter() - t0))
                timed += x.size / rates[-1]
            steps += 1
    return float(np.median(rates))          # median: a hiccup of the machine is not the model's speed
