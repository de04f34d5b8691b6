"""Command line: parses options and calls the library. Heavy imports (NumPy, Numba, the
modules that load them) happen inside the commands, so that ``rnngen --help`` starts
instantly; at the top only rnngen.config, rnngen.errors and rnngen.plot's names (matplotlib is
imported only when a plot is drawn), which need neither."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from . import distributed
from .config import ACTIVATIONS, CELL_NAMES, OPTIMIZER_NAMES, SOFTMAX_NAMES, ModelConfig, TrainConfig, parse_duration
from .errors import RnngenError
from .plot import X_AXES

MODEL_HELP = "Checkpoint to use (default: $RNNGEN_MODEL, else model.npz)."
# Limits of one invocation, counted over the whole run: a --resume does not inherit them.
RUN_LIMITS = ("max_steps", "max_time")
SEED = click.IntRange(0, 2**63 - 1)
# A file name: accepted as given (the commands check the files), completed as a file by the shell.
FILE = click.Path()
STARTED = "rnngen.started"      # ctx.meta key: when the command started (time.perf_counter), for --max-time


class Duration(click.ParamType):
    """Seconds, or a duration with units: 90s, 10m, 2h, 1h30m, 1.5h (rnngen.config.parse_duration)."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Size(click.ParamType):
    """A count of weights: 16777216, 2^24, 16M, 1G (K, M, G: powers of 2**10)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        try:
            if "^" in text:
                base, power = (int(part) for part in text.split("^"))
                size = base ** power if 0 <= power <= 64 else -1        # a larger power is no size either
            else:
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                size = int(text[:-1] if scale > 1 else text) * scale
            if size < 0:
                raise ValueError(value)
            return size
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 16M, 2^24 or 16777216)", param, ctx)


SIZE = Size()


def model_option(f):
    return click.option("-m", "--model", "model_path", type=FILE, envvar="RNNGEN_MODEL", default="model.npz",
                        show_default=True, help=MODEL_HELP)(f)


def threads_option(f):
    return click.option("--threads", type=click.IntRange(min=0), default=0,
                        help="Threads for the heavy work (default 0: all cores for large models, 1 for "
                             "small ones).")(f)


def _load_for_use(path: str, threads: int, job: str, lines: int = 1):
    """Load a checkpoint for ``job`` ("score", or "sample" of ``lines`` lines) and give the BLAS
    threads to the pool that does its heavy products (:func:`blas.use_threads`)."""
    from . import blas, jit

    ckpt = _load(path, training_state=False)
    cfg = ckpt.model.config
    blas.use_threads(threads or blas.auto_threads(cfg.hidden, cfg.vocab_size), job, cfg.hidden,
                     ckpt.model.cell.gates, lines)
    jit.before_compile(_announce_compiling)
    return ckpt


def _compiled_marker() -> str | None:
    """A file in the package's __pycache__ named after the kernel sources' hash: present once
    a run has compiled (and Numba has cached) kernels for exactly these sources. None when
    the package folder is read-only (Numba then caches elsewhere and we cannot tell)."""
    import hashlib

    package = os.path.dirname(os.path.abspath(__file__))
    if not os.access(package, os.W_OK):
        return None
    digest = hashlib.sha256()
    for name in ("kernels.py", "optim.py", "jit.py"):
        with open(os.path.join(package, name), "rb") as fh:
            digest.update(fh.read())
    return os.path.join(package, "__pycache__", f"rnngen-compiled-{digest.hexdigest()[:16]}")


def _announce_compiling() -> None:
    """Say once, on a terminal, that the first run compiles the kernels (later runs load them)."""
    marker = _compiled_marker()
    if marker is None or os.path.exists(marker):
        return
    if sys.stderr.isatty():
        click.echo("rnngen: compiling the Numba kernels (first run only; later runs start at once)", err=True)
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "w").close()
    except OSError:
        pass


def _load(path: str, training_state: bool = True):
    from .checkpoint import load

    return load(path, training_state)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rnngen")
def cli():
    """Train recurrent-neural-network language models on a text file, sample new
    text from them and score sentences.

    \b
      rnngen train corpus.txt              # writes model.npz
      rnngen sample --n 10                 # ten generated lines
      rnngen score "some sentence"         # log-probability and perplexity
      cat lines.txt | rnngen score - | sort -n | head
      rnngen info                          # the BLAS in use, and what is in model.npz
      rnngen plot run.jsonl                # curves (from rnngen train --log-file run.jsonl)

    The BLAS library (NumPy's OpenBLAS, or MKL when installed and measured faster here) is
    chosen by a short calibration cached per machine; RNNGEN_BLAS=openblas or =mkl forces it.
    """
    from .blas.choice import check

    click.get_current_context().meta[STARTED] = time.perf_counter()     # a --max-time budget counts from here
    check()


def _options(*options):
    """One decorator for several click options, shown in --help in the order given."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


# The train command's options by what they configure. The data options are prepare_data's
# keyword arguments, the model options ModelConfig's fields and the training options
# TrainConfig's, under the same names.
DATA_OPTIONS = ("valid_path", "valid_fraction", "unit", "lowercase", "vocab_size", "min_count", "encoding_errors")
MODEL_OPTIONS = ("cell", "hidden", "layers", "embed", "activation", "dropout", "tie_weights", "softmax", "classes",
                 "direct_order", "direct_size")

data_options = _options(
    click.option("-o", "--output", type=FILE, default="model.npz", show_default=True, help="Checkpoint to write."),
    click.option("--valid", "valid_path", type=FILE,
                 help="Validation text file (default: hold out the end of the corpus)."),
    click.option("--valid-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                 help="Fraction of lines held out for validation when --valid is not given."),
    click.option("--unit", type=click.Choice(["word", "char"]), default="word", show_default=True,
                 help="Tokens are whitespace-separated words or single characters."),
    click.option("--lowercase", is_flag=True, help="Lowercase the text before tokenising."),
    click.option("--vocab-size", type=click.IntRange(min=0), default=0,
                 help="Keep the N most frequent tokens (+ <eos>, <unk>); 0 = all."),
    click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Drop tokens seen fewer times."),
)
model_options = _options(
    click.option("--cell", type=click.Choice(CELL_NAMES), default="rnn", show_default=True, help="Recurrent cell."),
    click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True,
                 help="Hidden units per layer."),
    click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Stacked recurrent layers."),
    click.option("--embed", type=click.IntRange(min=0), default=0, help="Embedding size (default: --hidden)."),
    click.option("--activation", type=click.Choice(ACTIVATIONS), default="tanh", show_default=True,
                 help="Non-linearity of the vanilla RNN."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help="Dropout on non-recurrent connections."),
    click.option("--tie-weights", is_flag=True, help="Share the embedding with the output layer."),
    click.option("--softmax", type=click.Choice(SOFTMAX_NAMES), default="full", show_default=True,
                 help="Output layer: full softmax, frequency-binned word classes (much faster for large "
                      "vocabularies), or hs: hierarchical softmax over a Huffman tree of the words (faster still)."),
    click.option("--classes", type=click.IntRange(min=0), default=0,
                 help="Word classes for --softmax class (default: about sqrt(vocabulary))."),
    click.option("--direct-order", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Hashed n-gram maximum-entropy features up to this n-gram order (RNNME's direct "
                      "connections; 4 is usual); 0: none."),
    click.option("--direct-size", type=SIZE, default=0,
                 help="Hashed weights of the n-gram features: a power of two, e.g. 16M or 2^24 (default: "
                      "from the corpus size, 1M to 32M)."),
)
training_options = _options(
    click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=20, show_default=True),
    click.option("--bptt", type=click.IntRange(min=1), default=35, show_default=True,
                 help="Time steps per truncated-BPTT chunk."),
    click.option("--optimizer", type=click.Choice(OPTIMIZER_NAMES), default="adam", show_default=True),
    click.option("--lr", type=click.FloatRange(min=0), default=0.0,
                 help="Learning rate (default: sgd 1, adagrad 0.1, adam 0.002)."),
    click.option("--lr-decay", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
                 help="Multiply the learning rate by this when validation stops improving."),
    click.option("--decay-after", type=click.IntRange(min=0), default=0,
                 help="From this epoch on, apply --lr-decay after every epoch (Zaremba et al.: 4); 0 = only on "
                      "plateaus."),
    click.option("--clip", type=click.FloatRange(min=0), default=5.0, show_default=True,
                 help="Global gradient-norm clip (0: off)."),
    click.option("--warmup", type=click.IntRange(min=0), default=0,
                 help="Raise the learning rate linearly over the first N steps (SGD at lr 1 can shut an LSTM "
                      "off in its first steps); 0 = none."),
    click.option("--patience", type=click.IntRange(min=0), default=0,
                 help="Stop after N epochs without improvement (0: never)."),
    click.option("--max-time", type=Duration(), default=0.0,
                 help="Time budget of this command: 90s, 10m, 2h, 1h30m, 1.5h (a bare number: seconds). Training "
                      "stops so that the last validation and save end within it; the options not given are chosen "
                      "for it (see --dry-run). Not inherited by --resume."),
    click.option("--max-steps", type=click.IntRange(min=0), default=0,
                 help="Stop once the run has taken this many optimiser steps in all (not inherited by --resume)."),
    click.option("--checkpoint-every", type=click.FloatRange(min=0), default=600.0, show_default=True,
                 help="Seconds between periodic checkpoints."),
    click.option("--log-file", type=FILE, default="",
                 help="Write the run's metrics to this log (JSON lines; CSV if it ends in .csv). A new run "
                      "starts it afresh; --resume appends to the log the checkpoint names. See 'rnngen plot'."),
    click.option("--log-every", type=click.FloatRange(min=0), default=10.0, show_default=True,
                 help="Seconds between the metrics log's records (it also writes one at each epoch's end; "
                      "0: only then)."),
    click.option("--direct-lr", type=click.FloatRange(min=0), default=0.1, show_default=True,
                 help="SGD learning rate of the n-gram features' weights, per token; it decays with --lr."),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for initialisation and dropout."),
)


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=FILE)
@data_options
@model_options
@training_options
@click.option("--bidirectional", is_flag=True,
              help="Train a cloze model for `rnngen fill`: p(word | the rest of its line), from a forward and a "
                   "backward stack over whole lines (lines longer than --bptt in half-overlapping windows).")
@click.option("--resume", "resume_path", type=FILE, help="Continue the run saved in this checkpoint.")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
              help="What to do with bytes that are not UTF-8.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or epoch lines.")
@click.option("--dry-run", is_flag=True,
              help="Print the options chosen (one 'options: ...' line on stdout, the reasons on stderr) and exit.")
@threads_option
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Train data-parallel in N MPI ranks on this machine (mpiexec -n N; needs rnngen[mpi]); "
                   "--threads is then per rank, by default the cores shared out.")
@click.pass_context
def train(ctx, corpus, output, resume_path, quiet, dry_run, threads, workers, bidirectional, **options):
    """Train a language model on CORPUS (text files, one sentence per line; - for stdin).

    \b
    Examples:
      rnngen train corpus.txt                          # word level, writes model.npz
      rnngen train --unit char --hidden 256 shakespeare.txt -o shakes.npz
      rnngen train ptb.train.txt --valid ptb.valid.txt --optimizer sgd --lr 1 --hidden 200
      rnngen train corpus.txt --resume model.npz --epochs 20   # continue a run
      rnngen train corpus.txt --log-file run.jsonl && rnngen plot run.jsonl
      rnngen train corpus.txt --workers 2              # 2 MPI ranks on this machine
      mpiexec -f hostfile -n 8 rnngen train corpus.txt # 8 ranks across machines
      rnngen train corpus.txt --bidirectional -o bi.npz        # a cloze model for rnngen fill
      rnngen train corpus.txt --max-time 10m           # the best model and schedule for 10 minutes
      rnngen train corpus.txt --max-time 1h --cell lstm --dry-run   # what an hour's LSTM run would use

    Ctrl-C or SIGTERM stops at the end of the current chunk, saves the state to resume
    from and prints the command that resumes; a second Ctrl-C quits at once. The state is
    also saved every --checkpoint-every seconds, always atomically. A NaN or infinite loss
    goes back to the last saved state with half the learning rate (at most 3 times in a row).

    Under an MPI launcher each rank trains its share of every batch's streams; the result
    is that of one process with the same --batch-size. Rank 0 logs, validates and writes.

    --max-time is the whole command's budget, from its start to the last save. The options
    not given are then chosen for it, this corpus and this machine (a second or so of
    measuring, counted in the budget): the best model whose planned epochs fit, and a
    schedule that ends within them. Given options always win.
    """
    if workers is not None and distributed.launched_size() == 1:
        distributed.launch_workers(workers, _ARGV[0])
    from . import blas, jit
    from .budget import Deadline, option_list, reason_lines
    from .checkpoint import check_writable
    from .train import TrainingInterrupted, prepare_data
    from .train import train as run_training

    started = ctx.meta.get(STARTED, time.perf_counter())
    budget = options.pop("max_time")
    options["max_time"] = 0.0                           # the budget is a deadline (below), not training seconds
    data = {name: options.pop(name) for name in DATA_OPTIONS}
    model = {name: options.pop(name) for name in MODEL_OPTIONS}
    quiet = quiet or not distributed.world().root       # one log for the job: rank 0's
    model["direction"] = "bidirectional" if bidirectional else "forward"
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if not dry_run:
        check_writable(output)                          # before minutes of reading and training
    resume = _resumable(resume_path) if resume_path else None
    config = _train_config(ctx, options, resume)
    if config.log_file and not dry_run:
        kept = ctx.get_parameter_source("log_file") == click.core.ParameterSource.DEFAULT    # the checkpoint's
        config.log_file = _log_file(config.log_file, output, kept)
    notes: list[str] = []                               # said after the BLAS line and the choice
    vocab, train_ids, valid_ids = prepare_data(list(corpus), **data, vocab=resume.vocab if resume else None,
                                               log=notes.append)
    if not quiet:
        jit.before_compile(_announce_compiling)         # measuring for a budget compiles too
    model_config, config, choice = _choose(ctx, model, config, resume, budget, started, len(vocab), train_ids,
                                           valid_ids, threads)
    why = [*reason_lines(choice), *choice.notes] if budget or dry_run else []     # said when something was chosen
    for note in [f"rnngen: {blas.chosen().describe()}", f"rnngen: options: {option_list(choice.options)}",
                 *(f"rnngen: {line}" for line in why), *notes]:
        log(note)
    log(f"rnngen: {len(train_ids):,} training tokens, "
        f"{len(valid_ids) if valid_ids is not None else 0:,} validation tokens, vocabulary {len(vocab):,}")
    if dry_run:
        click.echo(f"options: {option_list(choice.options)}")
        return
    try:
        run_training(train_ids, valid_ids, vocab, model_config, config, output, resume=resume, log=log,
                     progress=not quiet and sys.stderr.isatty(), threads=threads or choice.threads or None,
                     deadline=Deadline(started + budget, budget) if budget else None)
    except TrainingInterrupted as exc:
        left = int(started + budget - time.perf_counter()) if budget else 0
        _exit_interrupted(ctx, exc, output, corpus, data, config, quiet, max(left, 1) if budget else 0)
    log(f"rnngen: saved {output}")


def _choose(ctx, model: dict, config, resume, budget: float, started: float, vocab_size: int, train_ids, valid_ids,
            threads: int):
    """The run's ModelConfig and TrainConfig, and the rnngen.budget.Choice that says why: on
    --resume the checkpoint's; with --max-time (forward models) the options not given chosen
    for the budget, measured on rank 0 for the whole job; else the options as given."""
    from dataclasses import replace

    from . import budget as budgets
    from .train import measure_speed

    given = {name: ctx.params[name] for name in budgets.DECIDED
             if name in ctx.params and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if resume is not None:
        options = budgets.options_of(resume.model.config, config)
        return resume.model.config, config, budgets.unchosen(options, given, "from the checkpoint")

    def configs(options: dict):
        model_options = {k: options[k] for k in budgets.MODEL_DECIDED}
        train_options = {k: v for k, v in options.items() if k not in budgets.MODEL_DECIDED}
        return ModelConfig(vocab_size=vocab_size, **{**model, **model_options}), replace(config, **train_options)

    if not budget or model["direction"] == "bidirectional":
        model_config = ModelConfig(vocab_size=vocab_size, **model).with_direct_size(len(train_ids))
        source = "default" if not budget else "default (a bidirectional model's options are not chosen for a budget)"
        return model_config, config, budgets.unchosen(budgets.options_of(model_config, config), given, source)
    choice = distributed.world().on_root(
        budgets.choose, given, budget, lambda: time.perf_counter() - started, len(train_ids),
        lambda options: measure_speed(*configs(options), train_ids, valid_ids, threads or None))
    return (*configs(choice.options), choice)


def _resumable(path: str):
    """The checkpoint at ``path``, which must hold the state to resume from."""
    resume = _load(path)
    if resume.resume is None:
        raise RnngenError(f"{path}: holds no training state to resume from")
    return resume


def _train_config(ctx, options: dict, resume):
    """This run's TrainConfig: the training options; on --resume the saved ones, overridden by
    those given now and by this run's limits (RUN_LIMITS)."""
    if resume is None:
        return TrainConfig(**options)
    saved = {k: v for k, v in resume.train.items() if k != "progress"}
    for name, value in options.items():
        if name in RUN_LIMITS or ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            saved[name] = value
    return TrainConfig.from_json(saved)


def _log_file(path: str, output: str, kept: bool) -> str:
    """The metrics log's absolute path (the checkpoint keeps it, and a --resume run from
    another folder must find the same file), checked to be writable and not the checkpoint.
    ``kept``: the path comes from the checkpoint, not from --log-file."""
    from .checkpoint import check_writable

    path = os.path.abspath(path)
    if path == os.path.abspath(output):
        raise RnngenError(f"--log-file {path} is the checkpoint (-o) itself: give the log another name")
    try:
        check_writable(path)
    except RnngenError as exc:
        if kept:
            raise RnngenError(f"{exc} (the checkpoint's metrics log: give another with --log-file, or none "
                              "with --log-file '')") from None
        raise
    return path


def _exit_interrupted(ctx, exc, output: str, corpus, data: dict, config, quiet: bool, budget_left: int):
    """After a signal (the state is saved): print the command that resumes (with what is left
    of --max-time's budget), and exit."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):     # saved: another one could only garble the exit
        signal.signal(sig, signal.SIG_IGN)
    if not distributed.world().root:                # rank 0 says it for the job
        sys.exit(128 + exc.signum)
    # Everything the saved state does not pin down goes into the command: the data
    # options (the resumed data must be the same) and this run's limits.
    size = distributed.world().size
    cmd = ["mpiexec", "-n", str(size)] if size > 1 else []       # any number of ranks resumes it
    cmd += ["rnngen", "train", *corpus]
    if data["valid_path"]:
        cmd += ["--valid", data["valid_path"]]
    if ctx.get_parameter_source("valid_fraction") != click.core.ParameterSource.DEFAULT:
        cmd += ["--valid-fraction", str(data["valid_fraction"])]
    if data["encoding_errors"] != "strict":
        cmd += ["--encoding-errors", data["encoding_errors"]]
    limits = {"max_steps": config.max_steps, "max_time": budget_left}
    cmd += [f"--{name.replace('_', '-')}={value}" for name, value in limits.items() if value]
    cmd += ["-q"] if quiet else []
    cmd += ["--resume", output, "-o", output]
    click.echo(f"rnngen: interrupted at {exc}; saved {output}. Resume with: {_shell_join(cmd)}", err=True)
    sys.exit(128 + exc.signum)


def _shell_join(args: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in args)


@cli.command()
@model_option
@click.option("-n", "--n", "n", type=click.IntRange(min=0), default=10, show_default=True, help="Lines to generate.")
@click.option("-t", "--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Softmax temperature; 0 = always the most likely token.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Sample only among the K most likely tokens (default: all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sample only from the smallest set of tokens holding this much probability.")
@click.option("--prime", default="", help="Text to continue.")
@click.option("--max-length", type=click.IntRange(min=1), default=100, show_default=True,
              help="Longest line, in tokens.")
@click.option("--seed", type=SEED, default=None, help="Seed for reproducible samples (default: random).")
@threads_option
def sample(model_path, n, temperature, top_k, top_p, prime, max_length, seed, threads):
    """Generate lines of text, one per line on stdout.

    \b
    Examples:
      rnngen sample --n 5 --seed 1
      rnngen sample --prime "the dogs" --temperature 0.7 --top-k 20
      rnngen sample -m shakes.npz --max-length 300 --top-p 0.9
    """
    from .sample import sample_blocks
    from .textio import decode_arg

    prime = decode_arg(prime, "--prime")
    ckpt = _load_for_use(model_path, threads, "sample", n)
    if top_k is not None and top_k > len(ckpt.vocab):
        raise click.BadParameter(f"{top_k} is more than the vocabulary's {len(ckpt.vocab)} tokens.",
                                 ctx=click.get_current_context(), param_hint="'--top-k'")
    for block in sample_blocks(ckpt.model, ckpt.vocab, n, temperature, top_k or 0, top_p, prime, max_length, seed):
        _write("".join(line + "\n" for line in block))


@cli.command()
@click.argument("sentences", nargs=-1)
@model_option
@click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl"]), default="tsv", show_default=True)
@click.option("--per-token", is_flag=True, help="Add each token's log-probability.")
@click.option("--stream", "stream_path", type=FILE,
              help="Perplexity of a whole file as one stream (standard LM evaluation).")
@click.option("--lines", "lines_path", type=FILE,
              help="Score each line of this file on its own (as score - < FILE); split over the ranks under MPI.")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@threads_option
def score(sentences, model_path, fmt, per_token, stream_path, lines_path, encoding_errors, quiet, threads):
    """Score sentences: log-probability, perplexity, tokens, OOV count, text (tab-separated).

    With no SENTENCE, or -, reads one sentence per line from stdin and writes each result
    as soon as its line is read. The log-probability is natural-log and includes the
    end-of-line token; the token count includes it too. An empty SENTENCE argument is an
    error, but an empty line on stdin is scored (as the end-of-line token alone), so the
    output stays aligned with the input line for line.

    \b
    Examples:
      rnngen score "the dog barks ."
      cat lines.txt | rnngen score - | sort -n | head
      rnngen score --format jsonl --per-token "the dog barks ."
      rnngen score --stream valid.txt          # perplexity of a whole file
      mpiexec -n 4 rnngen score --stream big.txt   # the file split over 4 MPI ranks
      mpiexec -n 4 rnngen score --lines lines.txt  # each line on its own, over 4 ranks

    Under an MPI launcher, --stream splits the file at line boundaries over the ranks; each
    piece after the first starts from the state that the text just before it leaves (a
    warm-up over 1,000 tokens), so the total differs from one process's only by that reset.
    --lines splits the file's lines over the ranks, exactly. Other forms of score run on
    rank 0 alone.

    A bidirectional model (rnngen train --bidirectional) gives no sentence probability:
    its first column is the pseudo-log-likelihood, the sum over the tokens of
    log p(token | every other token of the line) (<eos> not counted), its second
    exp(-PLL / tokens); JSONL names them "pseudo_logprob" and "pseudo_perplexity", and
    stderr says so.
    """
    from .textio import decode_arg, read_lines

    job = distributed.world()
    if not job.root and not stream_path and not lines_path:
        return
    sentences = tuple(decode_arg(s, f"sentence {i + 1}", encoding_errors) for i, s in enumerate(sentences))
    ckpt = _load_for_use(model_path, threads or (job.threads() if job.size > 1 else 0), "score")
    scorer, what = _line_scorer(ckpt, stream_path, quiet)
    if stream_path:
        batches = [[_stream_score(ckpt, stream_path, encoding_errors)]]
    elif lines_path:
        batches = [distributed.score_lines_part(job, ckpt.model, ckpt.vocab, read_lines(lines_path, encoding_errors),
                                                per_token)]
    elif sentences and sentences != ("-",):
        batches = [_argument_scores(ckpt, sentences, per_token, scorer)]
    else:                                               # stdin, each batch scored as soon as it is read
        batches = (scorer(ckpt.model, ckpt.vocab, lines, per_token)
                   for lines in _stdin_line_batches(encoding_errors))
    logprob, tokens = 0.0, 0
    for results in batches if job.root else ():
        _emit(results, fmt, per_token, "logprob" if what == "perplexity" else "pseudo_logprob")
        logprob += sum(r.logprob for r in results)
        tokens += sum(r.tokens for r in results)
    if not quiet and tokens and job.root:
        import math

        click.echo(f"rnngen: {tokens:,} tokens, {what} {math.exp(-logprob / tokens):.3f}", err=True)


def _line_scorer(ckpt, stream_path, quiet: bool):
    """(function scoring lines, what its perplexity is called): the sentence log-probability,
    or a bidirectional model's pseudo-log-likelihood (said on stderr)."""
    if not ckpt.model.config.bidirectional:
        from .score import score_lines

        return score_lines, "perplexity"
    if stream_path:
        raise RnngenError("--stream needs a forward model: a bidirectional model gives no stream probability")
    from .fill import pseudo_log_likelihood

    if not quiet:
        click.echo("rnngen: bidirectional model: scores are pseudo-log-likelihoods, sum of log p(token | the "
                   "other tokens), not sentence log-probabilities", err=True)
    return pseudo_log_likelihood, "pseudo-perplexity"


def _stream_score(ckpt, path: str, encoding_errors: str):
    """The file at ``path`` scored as one stream (state carried across lines)."""
    from .corpus import encode_files
    from .score import SentenceScore, stream_logprob
    from .textio import TextFile

    with TextFile(path, encoding_errors) as text_file:
        ids = encode_files([text_file], ckpt.vocab)
    job = distributed.world()
    logprob, count = stream_logprob(ckpt.model, ids) if job.size == 1 else distributed.stream_logprob_part(
        job, ckpt.model, ids)
    return SentenceScore(path, logprob, count, int((ids == ckpt.vocab.unk).sum()))


def _argument_scores(ckpt, sentences: tuple[str, ...], per_token: bool, score_lines):
    """The SENTENCE arguments scored by ``score_lines``, each on its own; an empty one is an error."""
    for i, sentence in enumerate(sentences):
        if not len(ckpt.vocab.encode_line(sentence)[0]):
            raise RnngenError(f"sentence {i + 1} is empty (to score the end-of-line token alone, "
                              "give an empty line on stdin: echo | rnngen score -)")
    return score_lines(ckpt.model, ckpt.vocab, list(sentences), per_token)


def _emit(results, fmt: str, per_token: bool, logprob_key: str = "logprob") -> None:
    out = []
    for r in results:
        if fmt == "jsonl":
            rec = {logprob_key: r.logprob, logprob_key.replace("logprob", "perplexity"): r.perplexity,
                   "tokens": r.tokens, "oov": r.oov, "text": r.text}
            if per_token:
                rec["token_logprobs"] = r.token_logprobs
            out.append(json.dumps(rec, ensure_ascii=False))
        else:
            cols = [f"{r.logprob:.4f}", f"{r.perplexity:.3f}", str(r.tokens), str(r.oov), r.text]
            if per_token:
                cols.append(" ".join(f"{t}:{lp:.4f}" for t, lp in r.token_logprobs))
            out.append("\t".join(cols))
    _write("".join(line + "\n" for line in out))


class _ReaderGone(Exception):
    """Stdout's reader went away (``| head``). Raised instead of BrokenPipeError, which
    click would turn into exit status 1."""


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise _ReaderGone from None


def _stdin_line_batches(encoding_errors: str):
    """Yield lists of complete lines from stdin as they arrive: whatever is already
    available is scored together (fast on files), a lone line is scored at once (tail -f).
    A line's pieces are joined only once it is complete: linear time on one huge line."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors=encoding_errors)
    stream = sys.stdin.buffer
    pending: list[str] = []
    offset, started = 0, False
    while True:
        data = stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16)
        held = len(decoder.getstate()[0])     # bytes of a character split by the previous read
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise RnngenError(f"<stdin>: not valid UTF-8 at byte offset {offset - held + exc.start} "
                              "(pass --encoding-errors replace to go on)") from None
        offset += len(data)
        if text and not started:
            text, started = text.removeprefix("\ufeff"), True
        if "\x00" in text:
            raise RnngenError("<stdin>: looks like binary data (NUL byte)")
        if not data:
            last = "".join(pending)
            if last:
                yield [last.removesuffix("\r")]
            return
        if "\n" not in text:
            pending.append(text)
            continue
        first, *lines, last = text.split("\n")
        yield [line.removesuffix("\r") for line in ["".join(pending) + first, *lines]]
        pending = [last]


@cli.command()
@click.argument("sentences", nargs=-1)
@model_option
@click.option("--blank", default="___", show_default=True, help="The marker of the blank to fill.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Candidates per line, most probable first.")
@click.option("--candidates", help="Comma-separated tokens to rank (only these); prob is then normalised over "
                                   "them. A token not in the vocabulary is an error.")
@click.option("--allow-unk", is_flag=True, help="Let <unk> be a candidate (<eos> never is).")
@click.option("--rescore", "rescore_path",
              help="With a bidirectional model: re-rank its top 50 (at least --top-k) exactly with this forward "
                   "model (same vocabulary).")
@click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl"]), default="tsv", show_default=True)
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@threads_option
def fill(sentences, model_path, blank, top_k, candidates, allow_unk, rescore_path, fmt, encoding_errors, threads):
    """Fill the blank (___) of each sentence: the --top-k most probable tokens.

    TSV columns: probability, token, the filled text; with more than one sentence, or from
    stdin, the input's line number comes first, so each line's rows stay attributable.
    --format jsonl writes one object per input line: {"text": ..., "candidates": [{"token",
    "prob", "logprob"}, ...]} (logprob = ln prob). prob is normalised over the tokens that
    may fill the blank: the vocabulary without <eos> and <unk> (--allow-unk keeps it), or
    the --candidates given.

    With a bidirectional model (rnngen train --bidirectional) the model's cloze output
    answers; with a forward model the answer is exact: p(w | left, right) is proportional
    to the probability of the whole filled sentence, computed for every candidate.

    A sentence argument with no blank, or more than one, is an error. On stdin (- or no
    SENTENCE; streamed line by line) such a line gets an error record instead, so the
    output stays aligned: in TSV one row "LINE<tab>error<tab><tab>MESSAGE", in JSONL
    {"text": ..., "candidates": [], "error": MESSAGE}; the exit status is then 1.

    \b
    Examples:
      rnngen fill -m bi.npz "the cat ___ on the mat"
      rnngen fill -m bi.npz --candidates sat,sits,sit "the cat ___ on the mat"
      rnngen fill -m lm.npz -k 3 "the dogs that the cat sees ___ ."   # exact, forward model
      rnngen fill -m bi.npz --rescore lm.npz --format jsonl - < blanks.txt
    """
    from .fill import fill_lines
    from .textio import decode_arg

    sentences = tuple(decode_arg(s, f"sentence {i + 1}", encoding_errors) for i, s in enumerate(sentences))
    ckpt = _load_for_use(model_path, threads, "score")
    rescore = _rescore_model(rescore_path, ckpt) if rescore_path else None
    options = dict(top_k=top_k, blank=blank, allow_unk=allow_unk, rescore=rescore,
                   candidates=[c.strip() for c in candidates.split(",")] if candidates is not None else None)
    if sentences and sentences != ("-",):
        results = fill_lines(ckpt.model, ckpt.vocab, list(sentences), **options)
        for i, r in enumerate(results):
            if r.error:
                raise RnngenError(f"sentence {i + 1}: {r.error}")
        _emit_fill(results, fmt, 1 if len(results) > 1 else None)
        return
    line_no, failed = 1, False
    for batch in _stdin_line_batches(encoding_errors):
        # A cloze model fills what has arrived side by side; exact fill costs a batch of its
        # own per line, so each line's rows are written as soon as they are known.
        for lines in [batch] if ckpt.model.config.bidirectional else [[line] for line in batch]:
            results = fill_lines(ckpt.model, ckpt.vocab, lines, **options)
            _emit_fill(results, fmt, line_no)
            failed = failed or any(r.error for r in results)
            line_no += len(lines)
    if failed:
        sys.exit(1)


def _rescore_model(path: str, ckpt):
    """The forward model of --rescore, which must share ``ckpt``'s vocabulary."""
    rescore = _load(path, training_state=False)
    if not ckpt.model.config.bidirectional:
        raise RnngenError("--rescore re-ranks a bidirectional model's answer; a forward model's fill is already exact")
    if rescore.model.config.bidirectional or rescore.vocab.tokens != ckpt.vocab.tokens:
        raise RnngenError(f"{path}: --rescore needs a forward model with the same vocabulary")
    return rescore.model


def _emit_fill(results, fmt: str, first_line: int | None) -> None:
    """Rows of fill results; with ``first_line`` each row starts with its input's line number."""
    out = []
    for n, r in enumerate(results):
        if fmt == "jsonl":
            rec = {"text": r.text, "candidates": [{"token": c.token, "prob": c.prob, "logprob": c.logprob}
                                                  for c in r.candidates]}
            if r.error:
                rec["error"] = r.error
            out.append(json.dumps(rec, ensure_ascii=False))
            continue
        lead = [] if first_line is None else [str(first_line + n)]
        if r.error:
            out.append("\t".join([*lead, "error", "", r.error]))
            click.echo(f"rnngen: line {first_line + n}: {r.error}", err=True)
        out.extend("\t".join([*lead, f"{c.prob:.4f}", c.token, r.filled(c.token)]) for c in r.candidates)
    _write("".join(line + "\n" for line in out))


@cli.command()
@click.argument("model_path", required=False, type=FILE)
def info(model_path):
    """Show which BLAS library rnngen uses here and why, then a checkpoint's configuration,
    vocabulary, size and training history (MODEL_PATH, else $RNNGEN_MODEL, else model.npz;
    without a model only the first part).

    \b
    Examples:
      rnngen info                  # this machine, and model.npz if there is one
      rnngen info shakes.npz
    """
    from . import blas

    if model_path is None:
        model_path = os.environ.get("RNNGEN_MODEL") or "model.npz"
        if not os.path.exists(model_path):
            _write("".join(line + "\n" for line in blas.describe()))
            click.echo(f"rnngen: no model: {model_path} does not exist (give one: rnngen info MODEL)", err=True)
            return
    ckpt = _load(model_path)                            # a bad model: its error alone, nothing on stdout
    cfg = ckpt.model.config
    out = [*blas.describe(), f"model       {model_path}"]
    out.append(f"cell        {cfg.cell} ({cfg.activation})" if cfg.cell == "rnn" else f"cell        {cfg.cell}")
    out.append(f"layers      {cfg.layers} x {cfg.hidden} hidden, embedding {cfg.embed_size}"
               f"{', tied' if cfg.tie_weights else ''}, dropout {cfg.dropout:g}")
    if cfg.bidirectional:
        out.append("direction   bidirectional (cloze model: rnngen fill; score gives pseudo-log-likelihoods)")
    if cfg.softmax == "class":
        out.append(f"softmax     class-factored, {len(cfg.class_bounds) - 1} classes")
    if cfg.softmax == "hs":
        out.append(f"softmax     hierarchical, Huffman tree over {cfg.vocab_size:,} words")
    if cfg.direct_order:
        out.append(f"n-grams     hashed maxent features up to order {cfg.direct_order}, {cfg.direct_size:,} weights "
                   f"({cfg.direct_size * ckpt.model.dtype.itemsize / 2**20:.0f} MB)")
    out.append(f"vocabulary  {len(ckpt.vocab):,} {ckpt.vocab.unit}s{' (lowercased)' if ckpt.vocab.lowercase else ''}")
    out.append(f"parameters  {ckpt.model.num_params():,}")
    train = {k: v for k, v in ckpt.train.items() if k != "progress"}
    if train:
        out.append("training    " + " ".join(f"{k}={v}" for k, v in train.items()))
    for h in ckpt.history:
        valid = f"{h['valid_ppl']:.2f}" if h.get("valid_ppl") is not None else "-"
        out.append(f"epoch {h['epoch']:3d}{'*' if h.get('partial') else ' '} train ppl {h['train_ppl']:.2f}  "
                   f"valid ppl {valid}  lr {h['lr']:.4g}  {h['tokens_per_s']:.0f} tok/s")
    _write("".join(line + "\n" for line in out) + _history_curve(ckpt.history))


def _history_curve(history: list) -> str:
    """The text chart of the history's perplexity per epoch, after a blank line ("" without
    a history); ASCII when stdout cannot encode the block characters."""
    import shutil

    from .textplot import text_curve

    try:
        "▁█└▲".encode(sys.stdout.encoding or "ascii")
        plain = False
    except (UnicodeEncodeError, LookupError):
        plain = True
    width = min(60, max(10, shutil.get_terminal_size().columns - 12))
    curve = text_curve(history, width=width, height=8, ascii=plain)
    return "\n" + curve if curve else ""


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=FILE, metavar="RUN...")
@click.option("-o", "--output", type=FILE, default="curves.png", show_default=True,
              help="Picture to write; its extension picks the format (.png, .svg, .pdf).")
@click.option("--x", "x", type=click.Choice(X_AXES), default="time", show_default=True,
              help="Horizontal axis: training time, tokens processed or epochs.")
def plot(runs, output, x):
    """Draw the train and valid perplexity of training runs against time, tokens or epochs.

    Each RUN is a metrics log written by 'rnngen train --log-file' (JSON lines, or CSV) or a
    checkpoint (.npz), whose per-epoch history is drawn. Several runs share the picture,
    one colour each, with a legend: train perplexity solid, valid perplexity dashed with a
    dot per measurement, a dotted line where the learning rate decays, a star at the best
    model. The perplexity axis is logarithmic when the values span more than 3x. Needs
    matplotlib: pip install 'rnngen[plot]'.

    \b
    Examples:
      rnngen plot run.jsonl                              # writes curves.png
      rnngen plot rnn.jsonl lstm.csv --x tokens -o rnn-vs-lstm.png
      rnngen plot model.npz --x epoch -o history.svg
    """
    from .plot import plot_runs, run_names

    drawn = list(zip(run_names(runs), (_run_records(path) for path in runs)))
    plot_runs(drawn, x=x, output=output)
    click.echo(f"rnngen: wrote {output} ({len(drawn)} run{'s' if len(drawn) > 1 else ''} against {x})", err=True)


def _run_records(path: str) -> list[dict]:
    """The records of a metrics log, or those made from a checkpoint's history."""
    from .metrics import history_to_records, read_log

    if not _is_checkpoint(path):
        return read_log(path)
    ckpt = _load(path, training_state=False)
    if not ckpt.history:
        raise RnngenError(f"{path}: no training history to plot (the checkpoint holds no finished epoch)")
    return history_to_records(ckpt.history, ckpt.train.get("batch_size", 0) * ckpt.train.get("bptt", 0))


def _is_checkpoint(path: str) -> bool:
    """Named .npz, or a zip archive whatever its name; anything else is read as a metrics log."""
    if path.lower().endswith(".npz"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False                # read_log says what is wrong with the file


# The command line's arguments, for --workers to start the same command under mpiexec.
_ARGV: list = [None]
# Commands with nothing to share out over MPI ranks: under a launcher, rank 0 runs them once.
ONE_PROCESS_COMMANDS = ("sample", "fill", "info", "plot")


def main(argv=None) -> None:
    """Entry point: every expected failure becomes one line on stderr and a non-zero exit;
    under an MPI launcher, an error on any rank ends the whole job (distributed.run_rank)."""
    _ARGV[0] = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in _ARGV[0] if not arg.startswith("-")), None)
    if distributed.launched_size() > 1 and command not in ONE_PROCESS_COMMANDS:
        distributed.run_rank(_main, argv)
    elif distributed.launched_rank() == 0:       # under a launcher, rank 0 alone runs the others
        _main(argv)


def _main(argv=None) -> None:
    prog = "rnngen"
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:   # bare `rnngen`: the help, as click shows it
        exc.show()
        sys.exit(2)
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else prog
        _error(cmd, f"{exc.format_message()} (see '{cmd} --help')")
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        _error(prog, exc.format_message())
        sys.exit(exc.exit_code)
    except RnngenError as exc:
        _error(prog, str(exc))
        sys.exit(1)
    except MemoryError:
        _error(prog, "out of memory (try a smaller model, --batch-size or --vocab-size)")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except _ReaderGone:
        # Quiet, as shell tools are. Pointing stdout at /dev/null keeps the interpreter's
        # final flush of what is still buffered from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)


def _error(prefix: str, message: str) -> None:
    prefix += distributed.before_error()
    click.echo(f"{prefix}: error: {' '.join(message.split())}", err=True)
