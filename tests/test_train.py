"""The pieces of the training loop: one step, the progress a checkpoint saves, the caller's config."""

import dataclasses

import numpy as np
import pytest

from rnngen import checkpoint
from rnngen.model import Model, ModelConfig
from rnngen.optim import make_optimizer
from rnngen.train import Progress, TrainConfig, train, train_step


def test_a_step_with_a_finite_loss_updates_and_carries_the_state():
    model = Model.init(ModelConfig(vocab_size=7, hidden=5), seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    ids = np.random.default_rng(0).integers(0, 7, (5, 3)).astype(np.int32)
    state = model.zero_state(3)
    step = train_step(model, make_optimizer("sgd", model.params), ids[:-1], ids[1:], state, 0.5, 1.0)
    assert step.finite and np.isfinite(step.nll) and step.norm > 0
    assert step.state.shape == state.shape and not np.array_equal(step.state, state)
    assert not np.array_equal(model.params["l0.W_h"], before["l0.W_h"])


def test_a_step_with_a_non_finite_loss_changes_nothing(monkeypatch):
    model = Model.init(ModelConfig(vocab_size=7, hidden=5), seed=1)
    optim = make_optimizer("adam", model.params)
    before = {k: v.copy() for k, v in model.params.items()}
    real = Model.loss_and_grads
    monkeypatch.setattr(Model, "loss_and_grads", lambda self, *a, **k: (float("nan"), *real(self, *a, **k)[1:]))
    ids = np.zeros((4, 2), dtype=np.int32)
    step = train_step(model, optim, ids[:-1], ids[1:], model.zero_state(2), 0.1, 5.0)
    assert not step.finite and optim.steps == 0
    assert all(np.array_equal(model.params[k], v) for k, v in before.items())


def test_progress_is_saved_under_the_keys_older_checkpoints_have():
    """--resume reads train.progress by these names: a rename would strand older checkpoints."""
    names = [f.name for f in dataclasses.fields(Progress)]
    assert names == [*checkpoint.PROGRESS_FIELDS, "done", *checkpoint.PROGRESS_LATER_FIELDS]
    saved = {"epoch": 2, "chunk": 5, "step": 77, "lr": 0.25, "best_valid": 9.5, "best_score": 9.1, "bad_epochs": 1,
             "epoch_nll": 12.5, "epoch_tokens": 300, "elapsed": 3.5, "rng": {"bit_generator": "PCG64"},
             "data": "900:0badf00d", "done": False, "tokens": 53900}
    assert dataclasses.asdict(Progress.from_json(saved)) == saved
    del saved["tokens"]                             # written before progress counted tokens
    assert Progress.from_json(saved).tokens == 0


def test_train_leaves_the_callers_config_alone(tmp_path):
    """A corpus too short for the batch size trains with a smaller one, in a copy of the config."""
    from rnngen.vocab import Vocab

    vocab = Vocab(tokens=["<eos>", "<unk>", "a", "b"])
    config = TrainConfig(epochs=1, batch_size=20)
    ckpt = train(np.array([2, 3, 2, 0], dtype=np.int32), None, vocab, ModelConfig(vocab_size=4, hidden=4), config,
                 str(tmp_path / "m.npz"), log=lambda m: None)
    assert config == TrainConfig(epochs=1, batch_size=20)
    assert ckpt.train["batch_size"] == 3


def test_the_clip_is_applied_before_the_update():
    """clip 0 lets the whole gradient through; a small clip scales the same update down."""
    ids = np.random.default_rng(3).integers(0, 7, (6, 2)).astype(np.int32)
    moved = {}
    for clip in (0.0, 1e-3):
        model = Model.init(ModelConfig(vocab_size=7, hidden=5), seed=2)
        before = model.params["out.b"].copy()
        train_step(model, make_optimizer("sgd", model.params), ids[:-1], ids[1:], model.zero_state(2), 1.0, clip)
        moved[clip] = np.abs(model.params["out.b"] - before).max()
    assert 0 < moved[1e-3] < moved[0.0]


def _train_watching_steps(tmp_path, monkeypatch, config: TrainConfig, watch, threads=None) -> None:
    """Train a 4-token model on 400 random ids; ``watch(args)`` sees each train_step call's
    arguments (model, optim, x, y, state, lr, clip, ..., direct_lr)."""
    import rnngen.train
    from rnngen.vocab import Vocab

    def step(*args):
        watch(args)
        return train_step(*args)

    monkeypatch.setattr(rnngen.train, "train_step", step)
    ids = np.random.default_rng(1).integers(0, 4, 400).astype(np.int32)
    train(ids, None, Vocab(tokens=["<eos>", "<unk>", "a", "b"]), ModelConfig(vocab_size=4, hidden=4), config,
          str(tmp_path / "m.npz"), log=lambda m: None, threads=threads)


def test_train_gives_the_blas_threads_back(tmp_path, monkeypatch):
    """Training on two lanes sets NumPy's BLAS to one thread for the run, and back after it."""
    from rnngen import blas

    seen = []
    with blas.numpy_threads(2):
        _train_watching_steps(tmp_path, monkeypatch, TrainConfig(epochs=1, batch_size=4),
                              lambda args: seen.append(blas.thread_count()), threads=2)
        assert seen and set(seen) == {1}                    # each lane's BLAS on one thread during the run
        assert blas.thread_count() == 2                     # as the caller had it afterwards


def test_warmup_raises_the_rate_linearly_over_its_steps(tmp_path, monkeypatch):
    """--warmup 4: the steps' rates are lr/4, 2lr/4, 3lr/4, then lr; the n-gram rate follows."""
    rates = []
    config = TrainConfig(epochs=1, batch_size=4, bptt=5, optimizer="sgd", lr=0.8, warmup=4, max_steps=6)
    _train_watching_steps(tmp_path, monkeypatch, config, lambda args: rates.append((args[5], args[-1])))
    assert [r for r, _ in rates] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert [d for _, d in rates] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
