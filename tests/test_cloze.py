"""The bidirectional (cloze) model: gradients in float64, no leakage of x_t into
p(x_t | rest), line batching, checkpoints."""

import json
import zipfile

import numpy as np
import pytest
from numeric import numeric_grad

from rnngen.checkpoint import Checkpoint, load, save
from rnngen.cloze import ClozeModel, LineBatches, build_model, lines_logprobs, split_lines, windows
from rnngen.config import ModelConfig
from rnngen.errors import RnngenError
from rnngen.model import Model
from rnngen.vocab import Vocab

V, T, B = 9, 5, 3
TOL = 1e-5


def cloze_model(seed=0, dtype=np.float64, **kw) -> ClozeModel:
    config = ModelConfig(vocab_size=V, direction="bidirectional", **{"hidden": 4, "embed": 3, **kw})
    if config.softmax == "class":
        config = config.with_classes(np.arange(V, 0, -1))
    model = ClozeModel.init(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for v in model.params.values():          # larger weights: the non-linearities are exercised
        v += rng.normal(0, 0.3, v.shape).astype(dtype)
    return model


def lines_batch(rng, T=T, B=B):
    targets = rng.integers(1, V, size=(T, B)).astype(np.int32)
    inputs = np.concatenate((np.zeros((1, B), np.int32), targets[:-1]))
    return inputs, targets


CASES = {
    "rnn-1": dict(cell="rnn"),
    "rnn-relu-2-dropout": dict(cell="rnn", activation="relu", layers=2, dropout=0.3),
    "gru-2-dropout": dict(cell="gru", layers=2, dropout=0.3),
    "lstm-2-dropout": dict(cell="lstm", layers=2, dropout=0.3),
    "lstm-tied-class": dict(cell="lstm", embed=4, tie_weights=True, softmax="class", classes=3),
    "gru-class-dropout": dict(cell="gru", softmax="class", classes=3, dropout=0.2),
}


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(case):
    model = cloze_model(**CASES[case])
    rng = np.random.default_rng(1)
    x, y = lines_batch(rng)
    masks = model.dropout_masks(rng, T, B) if model.config.dropout else None
    state = model.zero_state(B)

    def f():
        return model.loss_and_grads(x, y, state, masks)[0] / B

    nll, grads, out_state = model.loss_and_grads(x, y, state, masks)
    assert out_state is state and set(grads) == set(model.params)
    assert any(k.startswith("r0.") for k in grads)
    for name, param in model.params.items():
        num, ana = numeric_grad(f, param), np.asarray(grads[name])
        err = np.abs(num - ana).max() / max(np.abs(num).max(), np.abs(ana).max(), 1e-8)
        assert err < TOL, f"{name}: relative error {err:.2e}"


def test_loss_is_the_sum_of_line_logprobs():
    model = cloze_model(cell="gru", layers=2)
    x, y = lines_batch(np.random.default_rng(2))
    nll = model.loss_and_grads(x, y, model.zero_state(B))[0]
    assert nll == pytest.approx(-model.line_logprobs(y).sum(), rel=1e-10)


def cloze_distribution(model, line, t):
    """log p(. | line without position t) over the vocabulary."""
    top = model.line_tops(np.asarray(line, np.int32)[:, None])
    return model.next_logprobs(top[t])[0]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_no_leakage_of_the_answer(cell, layers):
    """p(. | rest) at t ignores x_t, and follows x_{t-1} and x_{t+1}, at every position."""
    model = cloze_model(cell=cell, layers=layers, seed=layers)
    rng = np.random.default_rng(layers)
    line = rng.integers(2, V, size=7)
    for t in range(len(line)):
        before = cloze_distribution(model, line, t)
        changed = line.copy()
        changed[t] = 2 + (line[t] - 1) % (V - 2)            # another token
        assert changed[t] != line[t]
        np.testing.assert_array_equal(cloze_distribution(model, changed, t), before)
        for s in (t - 1, t + 1):
            if 0 <= s < len(line):
                neighbour = line.copy()
                neighbour[s] = 2 + (line[s] - 1) % (V - 2)
                assert np.abs(cloze_distribution(model, neighbour, t) - before).max() > 1e-6, (t, s)


def test_batched_lines_score_as_each_alone():
    model = cloze_model(cell="lstm", layers=2, dtype=np.float32)
    rng = np.random.default_rng(3)
    lines = [rng.integers(1, V, size=n).astype(np.int32) for n in (4, 1, 4, 7, 0, 4)]
    together = lines_logprobs(model, lines)
    for line, lp in zip(lines, together):
        alone = model.line_logprobs(line[:, None])[:, 0] if len(line) else np.zeros(0)
        np.testing.assert_allclose(lp, alone, rtol=1e-5, atol=1e-6)


def test_windows_cover_long_lines_with_half_overlap():
    line = np.arange(1, 24)
    pieces = windows(line, 8)
    assert all(len(p) == 8 for p in pieces)
    assert pieces[0][0] == 1 and pieces[-1][-1] == 23
    assert set(np.concatenate(pieces)) == set(line)
    assert [p[0] for p in pieces] == [1, 5, 9, 13, 16]
    assert windows(line[:8], 8)[0] is not None and len(windows(line[:8], 8)) == 1


def test_line_batches_hold_whole_lines_of_one_length():
    ids = np.array([3, 4, 0, 5, 0, 0, 6, 7, 0, 8, 9, 10, 11, 12, 0, 2, 3], dtype=np.int32)
    assert [list(x) for x in split_lines(ids)] == [[3, 4], [5], [6, 7], [8, 9, 10, 11, 12], [2, 3]]
    data = LineBatches(ids, batch_size=2, max_length=4, seed=5)
    seen = []
    for i in range(data.count):
        x, y = data.chunk(i)
        assert x.shape == y.shape and x.dtype == np.int32
        assert (x[0] == 0).all() and (x[1:] == y[:-1]).all()
        seen += [tuple(col) for col in y.T]
    assert sorted(seen) == sorted([(3, 4), (5,), (6, 7), (8, 9, 10, 11), (9, 10, 11, 12), (2, 3)])
    again = LineBatches(ids, batch_size=2, max_length=4, seed=5)
    assert all((again.chunk(i)[1] == data.chunk(i)[1]).all() for i in range(data.count))
    with pytest.raises(RnngenError, match="no non-empty line"):
        LineBatches(np.zeros(4, np.int32), 2, 4)


def test_checkpoint_records_the_direction(tmp_path):
    vocab = Vocab.build(["a b c d e f g"])
    model = ClozeModel.init(ModelConfig(vocab_size=len(vocab), cell="gru", hidden=5, layers=2,
                                        direction="bidirectional"), seed=1)
    save(str(tmp_path / "bi.npz"), Checkpoint(model, vocab))
    back = load(str(tmp_path / "bi.npz"))
    assert isinstance(back.model, ClozeModel) and back.model.config.bidirectional
    assert set(back.model.params) == set(model.params)
    assert any(k.startswith("r1.") for k in back.model.params)


def rewrite_meta(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "meta.npy":
                import io

                meta = json.loads(np.load(io.BytesIO(data)).tobytes())
                change(meta)
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
                data = buf.getvalue()
            zout.writestr(info.filename, data)


def test_older_checkpoint_without_direction_loads_as_forward(tmp_path):
    vocab = Vocab.build(["a b c"])
    save(str(tmp_path / "lm.npz"), Checkpoint(Model.init(ModelConfig(vocab_size=len(vocab), hidden=4)), vocab))
    rewrite_meta(tmp_path / "lm.npz", tmp_path / "old.npz", lambda meta: meta["model"].pop("direction"))
    back = load(str(tmp_path / "old.npz"))
    assert type(back.model) is Model and back.model.config.direction == "forward"


@pytest.mark.parametrize("direction, message", [("sideways", "unknown direction"), (1, "must be a string"),
                                                ("bidirectional", "missing array 'param.r0.W_x'")])
def test_loading_validates_the_direction(tmp_path, direction, message):
    vocab = Vocab.build(["a b c"])
    save(str(tmp_path / "lm.npz"), Checkpoint(Model.init(ModelConfig(vocab_size=len(vocab), hidden=4)), vocab))
    rewrite_meta(tmp_path / "lm.npz", tmp_path / "bad.npz", lambda meta: meta["model"].update(direction=direction))
    with pytest.raises(RnngenError, match=message):
        load(str(tmp_path / "bad.npz"))


def test_build_model_picks_the_class():
    config = ModelConfig(vocab_size=V, hidden=3)
    assert type(build_model(config, Model.init(config).params)) is Model


@pytest.mark.parametrize("softmax", ["full", "class"])
def test_two_lanes_give_the_serial_gradients(softmax):
    from rnngen.lanes import Lanes

    model = cloze_model(cell="lstm", layers=2, dropout=0.2, softmax=softmax, classes=3)
    rng = np.random.default_rng(6)
    x, y = lines_batch(rng, T=6, B=4)
    masks = model.dropout_masks(rng, 6, 4)
    nll, grads, _ = model.loss_and_grads(x, y, model.zero_state(4), masks)
    nll2, grads2, _ = model.loss_and_grads(x, y, model.zero_state(4), masks, Lanes(2))
    assert nll2 == pytest.approx(nll, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(np.asarray(grads2[k]), np.asarray(grads[k]), rtol=1e-10, atol=1e-12)
