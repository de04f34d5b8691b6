"""Time budgets (``rnngen train --max-time``): the options a user did not give, chosen for
the budget, the corpus and this machine; and the deadline that training keeps.

The budget is the wall-clock time of the whole command, from its start (reading the data,
the BLAS calibration, compiling the kernels and measuring included) to the checkpoint's
last write. :func:`choose` picks the options from CANDIDATES, a table of recipes from the
cheapest to the best, each with the epochs it needs to be worth it. It measures each one's
training speed on this machine and the real data (a callable it is given: the caller times
a few steps, :func:`rnngen.train.measure_speed`), plans the epochs that fit in what is left
of the budget (:func:`planned_epochs`), takes the best candidate whose planned epochs reach
its need, and sets the schedule from them (:func:`schedule`). Options the user gave win:
they overlay every candidate (:func:`overlay`), so a model the user named gets the recipe
that its planned epochs call for.

:class:`Deadline` is the budget as training sees it: training stops when the time left is
no more than the reserve kept for the last validation and the checkpoint's writes, which
is estimated before training and refreshed by their real times.

Imports config alone: train imports this module, and the CLI calls it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import DEFAULT_LR, default_direct_size

# The options the chooser decides, in the order the option list shows them.
DECIDED = ("cell", "layers", "hidden", "softmax", "direct_order", "direct_size", "optimizer", "lr", "clip", "warmup",
           "bptt", "epochs", "decay_after", "lr_decay", "dropout")
MODEL_DECIDED = ("cell", "layers", "hidden", "softmax", "direct_order", "direct_size", "dropout")
SPEED_BLIND = ("optimizer", "lr", "clip", "warmup", "dropout", "epochs", "decay_after",
               "lr_decay")  # one measurement serves all


@dataclass(frozen=True)
class Candidate:
    """A recipe: model and training options, and the epochs it needs to be worth it."""

    name: str
    needs: float                    # planned epochs from which this beats the cheaper ones
    options: dict                   # DECIDED names but the schedule's (epochs, decay_after, lr_decay)
    decay_from: float = 0.5         # decay the lr every epoch from this share of the planned epochs on (at least 1)
    decay_by: int = 0               # ... and from this epoch on at the latest (0: no limit)
    why: str = ""
    min_tokens: int = 0             # not for corpora with fewer training tokens


# From the cheapest to the best; the chooser takes the last whose need the budget meets.
# C and D (SGD at lr 1) only from 500k training tokens: on Tiny Shakespeare's words (200k) C's
# LSTM did not learn (valid 774, then worse) where A reached 244 after one epoch. Both keep
# bptt at 20: at 35, SGD at lr 1 shut the LSTM off on PTB (its output h fell to about 0.001
# within 50 steps; the model is then its biases and n-grams). D warms the rate up: at 20 the
# 2x400 LSTM shut off too without it.
# The figures: PTB (930k tokens, 10k words), valid perplexity after each epoch, trained with
# the schedule the chooser gives each; re-tune here and in README's "Time budgets".
CANDIDATES = (
    Candidate("A", 1, dict(cell="rnn", layers=1, hidden=200, softmax="class", direct_order=4, optimizer="adam",
                           lr=0.002, clip=5.0, warmup=0, bptt=35, dropout=0.0),
              decay_from=0.0,
              why="PTB valid 157, 141, 135, 132, 130, 129 after epochs 1-6, the rate halved after each"),
    Candidate("C", 2.5, dict(cell="lstm", layers=2, hidden=200, softmax="class", direct_order=4, optimizer="sgd",
                             lr=1.0, clip=5.0, warmup=0, bptt=20, dropout=0.25),
              decay_from=0.5, decay_by=6, min_tokens=500_000,
              why="PTB valid 173, 138, 125, 119, 116, 115 after epochs 1-6 at lr 1, then halved: 108, 105, "
                  "104, 103, 102; 1.5-2x slower than A per token"),
    Candidate("D", 20, dict(cell="lstm", layers=2, hidden=400, softmax="class", direct_order=4, optimizer="sgd",
                            lr=1.0, clip=5.0, warmup=200, bptt=20, dropout=0.4),
              decay_from=0.5, decay_by=8, min_tokens=500_000,
              why="C twice as wide, with more dropout for the longer run; about 3x slower than C per token"),
)

MEASURE_SHARE = 0.2         # no new candidate is measured once this share of the budget is spent
# The rate halves after every epoch from the decay's start: on PTB, C decayed by 0.843 a
# epoch (a 30-minute plan) over-fitted to 110, halving (a 5-minute plan) reached 101.
LR_DECAY = 0.5
# The reserve before the deadline: SAFETY times the expected last validation and two writes
# (the epoch's save and the final one), and MARGIN for the process's start and exit.
SAFETY, MARGIN = 1.25, 0.5
WRITE_BYTES_PER_S, WRITE_FIXED = 100e6, 0.05    # a checkpoint write before one is timed: conservative
VALID_WARMUP, VALID_SAMPLE = 50, 2000            # tokens scored to estimate a validation


# --- what the budget leaves ----------------------------------------------------------------

@dataclass
class Speed:
    """A candidate measured on this machine."""

    tokens_per_s: float             # training
    validation: float               # seconds a validation of the whole validation stream takes
    write: float                    # seconds a checkpoint write is expected to take
    seconds: float = 0.0            # what measuring it cost
    threads: int = 0                # the threads it was measured on, the faster count (0: not measured)


def reserve_seconds(validation: float, write: float) -> float:
    """Seconds kept before the deadline for the last validation, the two writes after it, the exit."""
    return SAFETY * (validation + 2 * write) + MARGIN


def write_seconds(nbytes: int) -> float:
    """A checkpoint write of ``nbytes``, before any has been timed."""
    return WRITE_FIXED + nbytes / WRITE_BYTES_PER_S


def validation_seconds(score: Callable, ids) -> float:
    """Seconds ``score(ids)`` is expected to take: a warm-up (compiles), then a timed sample,
    scaled by the stream's length. 0 without a stream."""
    if ids is None or not len(ids):
        return 0.0
    score(ids[:VALID_WARMUP])
    sample = ids[:VALID_SAMPLE]
    t0 = time.perf_counter()
    score(sample)
    return (time.perf_counter() - t0) * len(ids) / len(sample)


def planned_epochs(seconds_left: float, speed: Speed, training_tokens: int) -> float:
    """Epochs that fit in ``seconds_left``: each trains the tokens then validates and saves,
    and the reserve is kept for the end."""
    epoch = training_tokens / max(speed.tokens_per_s, 1e-9) + speed.validation + speed.write
    return max(0.0, (seconds_left - reserve_seconds(speed.validation, speed.write)) / epoch)


class Deadline:
    """The end of a budget as a ``clock()`` value; training stops once what is left is no
    more than the reserve (:func:`reserve_seconds`) for the last validation and writes,
    whose times ``validation`` and ``write`` the training loop refreshes."""

    def __init__(self, at: float, budget: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        self.at, self.budget, self.clock = at, budget, clock
        self.validation = 0.0
        self.write = WRITE_FIXED

    @classmethod
    def after(cls, seconds: float, start: float | None = None) -> Deadline:
        """The deadline ``seconds`` after ``start`` (default: now) on time.perf_counter."""
        return cls((time.perf_counter() if start is None else start) + seconds, seconds)

    @property
    def reserve(self) -> float:
        return reserve_seconds(self.validation, self.write)

    def reached(self, ahead: float = 0.0) -> bool:
        """Is it time to stop, if training went on ``ahead`` seconds more (a step)?"""
        return self.clock() + ahead + self.reserve >= self.at

    def why(self) -> str:
        return (f"reached --max-time {self.budget:g}s (keeping {self.reserve:.1f}s for the last validation "
                f"and save)")


# --- choosing ------------------------------------------------------------------------------

@dataclass
class Plan:
    candidate: Candidate
    options: dict
    speed: Speed
    planned: float


@dataclass
class Choice:
    """The decided options (DECIDED names), why each, and what was measured."""

    options: dict
    reasons: dict
    notes: list = field(default_factory=list)
    threads: int = 0                # threads training runs on: the faster measured, 0 = train()'s default


def overlay(candidate: Candidate, given: dict, training_tokens: int, direct: bool) -> dict:
    """The candidate's options with the ``given`` ones on top. A given optimiser without a
    given rate takes its own default rate; n-gram features get their size from the corpus."""
    options = {**candidate.options, **given}
    if "optimizer" in given and "lr" not in given and given["optimizer"] != candidate.options["optimizer"]:
        options["lr"] = DEFAULT_LR[given["optimizer"]]
    if options["lr"] == 0:                                      # --lr 0: the optimiser's default, as TrainConfig has it
        options["lr"] = DEFAULT_LR[options["optimizer"]]
    if not direct and "direct_order" not in given:
        options["direct_order"] = 0
    if "direct_size" not in given:
        options["direct_size"] = default_direct_size(training_tokens, options["direct_order"]) \
            if options["direct_order"] else 0
    return options


def schedule(candidate: Candidate, planned: float, given: dict) -> dict:
    """Epochs (the planned ones, rounded up), and the rate halved after every epoch from the
    candidate's share of them on (by its ``decay_by`` at the latest). Given ones are kept."""
    decay_after = max(1, round(candidate.decay_from * planned))
    out = {"epochs": max(1, math.ceil(planned - 1e-6)),
           "decay_after": min(decay_after, candidate.decay_by or decay_after), "lr_decay": LR_DECAY}
    return {k: given.get(k, v) for k, v in out.items()}


def choose(given: dict, budget: float, spent: Callable[[], float], training_tokens: int,
           measure: Callable[[dict], Speed], candidates=CANDIDATES, direct: bool = True) -> Choice:
    """The options for ``budget`` seconds, of which ``spent()`` are used: the best candidate
    whose planned epochs reach its need (else the cheapest), under the ``given`` options.
    ``measure(options)`` times a candidate; one measurement serves candidates that differ in
    SPEED_BLIND options only. Candidates are measured cheapest first, until one falls short
    of its need (the next ones are slower and need more) or MEASURE_SHARE of the budget is spent."""
    plans: list[Plan] = []
    speeds: dict[tuple, Speed] = {}
    for candidate in candidates:
        if training_tokens < candidate.min_tokens and plans:
            break
        options = overlay(candidate, given, training_tokens, direct)
        key = tuple(sorted((k, v) for k, v in options.items() if k not in SPEED_BLIND))
        if key not in speeds:
            if plans and spent() > MEASURE_SHARE * budget:
                break
            speeds[key] = measure(options)
        plan = Plan(candidate, options, speeds[key], planned_epochs(budget - spent(), speeds[key], training_tokens))
        plans.append(plan)
        if plan.planned < candidate.needs:
            break
    best = next((p for p in reversed(plans) if p.planned >= p.candidate.needs), plans[0])
    best.planned = planned_epochs(budget - spent(), best.speed, training_tokens)     # after all measuring
    options = {**best.options, **schedule(best.candidate, best.planned, given)}
    c = best.candidate
    chosen = f"chose candidate {c.name}: needs {c.needs:g} epochs, {best.planned:.1f} fit ({c.why})"
    return Choice(options, _reasons(options, given, best), [*map(_measured, plans), chosen], best.speed.threads)


def _measured(p: Plan) -> str:
    o = p.options
    return (f"candidate {p.candidate.name} ({o['cell']} {o['layers']}x{o['hidden']}, {o['optimizer']}): "
            f"{p.speed.tokens_per_s:,.0f} tok/s on {p.speed.threads or '?'} thread(s), {p.planned:.1f} epochs fit "
            f"(needs {p.candidate.needs:g}); "
            f"measured in {p.speed.seconds:.1f}s")


def _reasons(options: dict, given: dict, best: Plan) -> dict:
    c = best.candidate
    why = {name: f"from the budget (candidate {c.name})" for name in options}
    why["direct_size"] = "from the corpus: 4 x training tokens x (order - 1), a power of two from 1M to 32M"
    why["epochs"] = f"from the budget: {best.planned:.1f} epochs fit ({best.speed.tokens_per_s:,.0f} tok/s measured)"
    why["decay_after"] = f"from the budget: the rate decays every epoch from {c.decay_from:g} of the planned ones on"
    why["lr_decay"] = "from the budget: halving (a slower decay over-fits)"
    return {name: "given" if name in given else why[name] for name in DECIDED}


def unchosen(options: dict, given: dict, source: str = "default") -> Choice:
    """The options as they are (no budget): each one "given" or ``source``."""
    return Choice(options, {name: "given" if name in given else source for name in DECIDED})


def options_of(model_config, config) -> dict:
    """The DECIDED options of a ModelConfig and a TrainConfig."""
    return {name: getattr(model_config if name in MODEL_DECIDED else config, name) for name in DECIDED}


def _shown(options: dict) -> list[tuple[str, str, str]]:
    """(name, option, value as typed) of the decided options worth saying: the n-gram ones
    only when used, --warmup only when on."""
    return [(name, f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value))
            for name, value in ((name, options[name]) for name in DECIDED)
            if not (name.startswith("direct_") and not options["direct_order"] or name == "warmup" and not value)]


def option_list(options: dict) -> str:
    """The command-line options that reproduce ``options``."""
    return " ".join(f"{option} {value}" for _, option, value in _shown(options))


def reason_lines(choice: Choice) -> list[str]:
    """One line per decided option: its value and why."""
    return [f"{option} {value}: {choice.reasons[name]}" for name, option, value in _shown(choice.options)]
