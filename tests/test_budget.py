"""Time budgets: durations, the chooser (with injected speeds), the schedule, the deadline."""

import math

import numpy as np
import pytest
from conftest import CORPUS

from rnngen import budget
from rnngen.budget import CANDIDATES, Candidate, Deadline, Speed, choose, option_list
from rnngen.config import DEFAULT_LR, parse_duration

PTB_TOKENS = 930_000


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), ("2m30s", 150), ("0.5", 0.5), ("1H", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "-5", "m", "", "1m1h", "1h1h", "1 h", "nan", "inf", "h30", "10m5", "1e308",
                                  "9000h"])
def test_bad_durations_raise(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


class Measured:
    """An injected measure: tokens/s by (cell, layers, hidden), no validation, quick writes;
    each call advances the fake clock by ``cost`` seconds."""

    def __init__(self, speeds: dict, cost: float = 0.5, validation: float = 1.0):
        self.speeds, self.cost, self.validation = speeds, cost, validation
        self.calls: list[dict] = []
        self.now = 0.0

    def __call__(self, options: dict) -> Speed:
        self.calls.append(options)
        self.now += self.cost
        speed = self.speeds[options["cell"], options["layers"], options["hidden"]]
        return Speed(speed, self.validation, 0.1, self.cost)

    def spent(self) -> float:
        return self.now


# A machine like the seed figures: rnn-200 52k tok/s, the LSTMs slower as they grow.
SPEEDS = {("rnn", 1, 200): 52_000, ("lstm", 1, 200): 30_000, ("lstm", 2, 200): 15_000, ("lstm", 2, 400): 5_000}


def pick(given: dict, seconds: float, speeds=SPEEDS, direct=True, **kw):
    measure = Measured(speeds, **kw)
    return choose(given, seconds, measure.spent, PTB_TOKENS, measure, direct=direct), measure


def test_a_tiny_budget_gets_the_cheapest_candidate_and_stops_measuring():
    choice, measure = pick({}, 20)          # 18 s an epoch of rnn-200: under one fits
    assert choice.options["cell"] == "rnn" and choice.options["optimizer"] == "adam"
    assert choice.options["epochs"] == 1 and choice.options["decay_after"] == 1
    assert len(measure.calls) == 1          # A falls short of its need: the slower ones are not measured


def test_a_large_budget_gets_the_best_candidate_and_an_sgd_schedule_within_it():
    choice, _ = pick({}, 3 * 3600)
    o = choice.options
    d = CANDIDATES[-1]
    assert (o["cell"], o["layers"], o["hidden"], o["optimizer"], o["dropout"]) == ("lstm", 2, 400, "sgd",
                                                                                   d.options["dropout"])
    epoch = PTB_TOKENS / 5_000 + 1.0 + 0.1
    planned = (3 * 3600 - 0.5 * len(CANDIDATES) - budget.reserve_seconds(1.0, 0.1)) / epoch   # each measured once
    assert o["epochs"] == math.ceil(planned)
    assert o["decay_after"] == min(round(d.decay_from * planned), d.decay_by) and o["lr_decay"] == 0.5


def test_a_middle_budget_gets_zarembas_small_recipe():
    choice, _ = pick({}, 8 * 60)            # lstm 2x200: about 7.5 epochs; 2x400 would get 2.5 of its 12
    o = choice.options
    assert (o["cell"], o["layers"], o["hidden"], o["optimizer"], o["bptt"], o["clip"]) == ("lstm", 2, 200, "sgd", 20, 5)
    assert o["dropout"] == 0.25 and o["epochs"] == 8 and 1 <= o["decay_after"] < o["epochs"]


def test_the_cheapest_is_taken_when_even_it_falls_short():
    choice, _ = pick({}, 5)
    assert choice.options["cell"] == "rnn" and choice.options["epochs"] == 1


def test_given_options_win_over_every_candidate():
    given = {"cell": "gru", "hidden": 64, "dropout": 0.3, "epochs": 50, "bptt": 10}
    speeds = {("gru", layers, 64): 80_000 for layers in (1, 2)}
    choice, measure = pick(given, 3 * 3600, speeds)
    assert all(choice.options[k] == v for k, v in given.items())
    assert all(call[k] == v for call in measure.calls for k, v in given.items())
    assert {name for name, why in choice.reasons.items() if why == "given"} == set(given)
    assert all(why.startswith(("from the budget", "from the corpus")) for name, why in choice.reasons.items()
               if name not in given)


def test_a_named_model_gets_a_recipe_that_does_not_over_fit():
    given = {"cell": "lstm", "layers": 2, "hidden": 200}
    choice, measure = pick(given, 30 * 60)          # 15k tok/s: about 27 epochs
    o = choice.options
    assert (o["cell"], o["layers"], o["hidden"]) == ("lstm", 2, 200)
    assert o["optimizer"] == "sgd" and o["dropout"] >= 0.25 and o["decay_after"] > 0
    assert len(measure.calls) == 2                  # once per architecture and --bptt (35, then 20)
    short, _ = pick(given, 150)                     # two epochs: Adam, and the best model is kept
    assert short.options["optimizer"] == "adam" and short.options["epochs"] <= 3


def test_a_given_optimizer_takes_its_own_rate():
    choice, _ = pick({"optimizer": "adam"}, 3 * 3600)
    assert choice.options["optimizer"] == "adam" and choice.options["lr"] == 0.002
    default, _ = pick({"lr": 0.0}, 3 * 3600)                  # --lr 0: the default rate, said as it is used
    assert default.options["lr"] == DEFAULT_LR[default.options["optimizer"]] == 1.0
    assert 1 <= choice.options["decay_after"] < choice.options["epochs"] and choice.options["lr_decay"] == 0.5


def test_direct_features_unless_the_chooser_is_told_otherwise():
    with_direct, _ = pick({}, 30, direct=True)
    assert with_direct.options["direct_order"] == 4 and with_direct.options["direct_size"] == 2**24
    assert "--direct-order 4 --direct-size 16777216" in option_list(with_direct.options)
    without, _ = pick({}, 30, direct=False)
    assert without.options["direct_order"] == 0 and "--direct" not in option_list(without.options)


def test_measuring_stops_once_its_share_of_the_budget_is_spent():
    slow_to_measure = Candidate("X", 0, {**CANDIDATES[0].options, "hidden": 100})
    candidates = (slow_to_measure, *CANDIDATES)
    speeds = {**SPEEDS, ("rnn", 1, 100): 90_000}
    measure = Measured(speeds, cost=50)             # each measurement eats a third of a 150 s budget
    choice = choose({}, 150, measure.spent, PTB_TOKENS, measure, candidates=candidates, direct=False)
    assert len(measure.calls) == 1 and choice.options["hidden"] == 100


def test_the_option_list_reproduces_the_choice():
    choice, _ = pick({}, 8 * 60, direct=False)
    words = option_list(choice.options).split()
    assert words[::2] == [f"--{n.replace('_', '-')}" for n in budget.DECIDED
                          if not n.startswith("direct_") and n != "warmup"]        # none: not shown
    assert dict(zip(words[::2], words[1::2]))["--lr"] == "1" and "--dropout" in words


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_deadline_keeps_a_reserve_for_the_last_validation_and_saves():
    clock = Clock()
    deadline = Deadline(clock.now + 60, 60, clock)
    deadline.validation, deadline.write = 10.0, 1.0
    reserve = budget.SAFETY * 12 + budget.MARGIN
    assert deadline.reserve == pytest.approx(reserve)
    clock.now += 60 - reserve - 2
    assert not deadline.reached() and deadline.reached(ahead=2.5)      # the next step would eat into it
    deadline.validation = 2.0                                           # a real validation was quicker
    assert not deadline.reached(ahead=2.5)
    clock.now += 60
    assert deadline.reached() and "--max-time 60s" in deadline.why()


def test_the_validation_estimate_scales_a_sample(monkeypatch):
    clock, seen = [0.0], []
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])

    def score(ids):                                       # 0.1 s a call, whatever its length
        seen.append(len(ids))
        clock[0] += 0.1

    estimate = budget.validation_seconds(score, np.zeros(20_000))
    assert seen == [budget.VALID_WARMUP, budget.VALID_SAMPLE]
    assert estimate == pytest.approx(0.1 * 20_000 / budget.VALID_SAMPLE)     # the sample's time, scaled
    assert budget.validation_seconds(lambda ids: 1 / 0, None) == 0.0


def test_training_at_its_deadline_validates_saves_and_returns(tmp_path):
    from rnngen.model import ModelConfig
    from rnngen.train import TrainConfig, prepare_data, train

    vocab, tr, va = prepare_data([str(CORPUS / "train.txt")], str(CORPUS / "valid.txt"))
    out = tmp_path / "m.npz"
    ckpt = train(tr[:20000], va[:500], vocab, ModelConfig(vocab_size=len(vocab), hidden=16), TrainConfig(epochs=5),
                 str(out), log=lambda m: None, deadline=Deadline.after(0))
    assert out.exists() and len(ckpt.history) == 1
    entry = ckpt.history[0]
    assert entry["partial"] and entry["step"] == 1 and entry["valid_ppl"] is not None


def test_measuring_tries_one_thread_and_all_cores_and_keeps_the_faster(monkeypatch):
    import rnngen.train as train_module
    from rnngen.model import ModelConfig
    from rnngen.train import TrainConfig, measure_speed, prepare_data

    vocab, tr, va = prepare_data([str(CORPUS / "train.txt")], str(CORPUS / "valid.txt"))
    monkeypatch.setattr(train_module.dist.World, "threads", lambda self: 2)
    real, tried = train_module._step_rate, {}

    def rate(run, data, config, threads, warmup, seconds):
        tried[threads] = real(run, data, config, threads, warmup, 0.05)
        return 1000.0 * threads if threads == 2 else 5000.0          # one thread measured faster

    monkeypatch.setattr(train_module, "_step_rate", rate)
    speed = measure_speed(ModelConfig(vocab_size=len(vocab), hidden=16, softmax="class", direct_order=3,
                                      direct_size=2**16), TrainConfig(), tr[:20000], va[:500])
    assert set(tried) == {1, 2} and all(r > 0 for r in tried.values())
    assert speed.threads == 1 and speed.tokens_per_s == 5000.0 and speed.validation > 0
    assert speed.write > budget.write_seconds(2**16 * 4)                     # the hashed weights and the rest
    assert measure_speed(ModelConfig(vocab_size=len(vocab), hidden=16), TrainConfig(), tr[:20000], None,
                         threads=2).threads == 2


def test_measuring_an_hs_model_uses_the_whole_streams_tree(monkeypatch):
    import rnngen.train as train_module
    from rnngen.config import huffman_tree
    from rnngen.model import ModelConfig
    from rnngen.train import TrainConfig, measure_speed, token_counts

    ids = np.concatenate([np.zeros(2000), np.arange(40).repeat(200)]).astype(np.int32)    # the head: all 0
    real, trees = train_module._new_run, []

    def new_run(model_config, *args):
        trees.append(model_config.tree)
        return real(model_config, *args)

    monkeypatch.setattr(train_module, "_new_run", new_run)
    measure_speed(ModelConfig(vocab_size=40, hidden=8, softmax="hs"), TrainConfig(batch_size=2, bptt=5), ids, None,
                  threads=1, seconds=0.01)
    assert trees == [huffman_tree(token_counts(ids, 40))]


def test_a_small_corpus_keeps_to_the_candidates_it_suits():
    measure = Measured(SPEEDS)
    small = 200_000                          # C's and D's SGD recipes need 500k tokens
    choice = choose({}, 30 * 60, measure.spent, small, measure)
    assert choice.options["cell"] == "rnn" and choice.options["optimizer"] == "adam"
    assert len(measure.calls) == 1
