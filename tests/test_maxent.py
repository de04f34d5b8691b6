"""Hashed n-gram maxent features (rnngen.maxent): exact gradients, normalised probabilities,
the same contexts however a stream is cut, and every command that reads a model."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from rnngen import jit
from rnngen.checkpoint import load
from rnngen.cli import cli
from rnngen.config import ModelConfig, RnngenError, default_direct_size
from rnngen.fill import exact_scores
from rnngen.kernels import ngram_bases
from rnngen.maxent import contexts
from rnngen.model import Model
from rnngen.sample import sample
from rnngen.score import chunked_logprobs, score_lines, stream_logprob
from rnngen.vocab import Vocab

V, T, B, SIZE = 23, 5, 3, 256          # a small hash: slices wrap around its end


def _model(softmax="full", cell="rnn", order=3, layers=1, seed=0):
    cfg = ModelConfig(vocab_size=V, hidden=6, cell=cell, layers=layers, softmax=softmax, direct_order=order,
                      direct_size=SIZE)
    cfg = cfg.with_classes(np.arange(V, 0, -1)).with_tree(np.arange(V, 0, -1))
    model = Model.init(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for v in model.params.values():
        v += rng.normal(0, 0.3, v.shape)
    return model


@pytest.mark.parametrize("softmax,cell,order", [("full", "rnn", 2), ("full", "lstm", 4), ("class", "rnn", 3),
                                                ("class", "gru", 5), ("hs", "rnn", 4), ("hs", "lstm", 3)])
def test_gradients_match_finite_differences(softmax, cell, order):
    model = _model(softmax, cell, order)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, V, (T, B)).astype(np.int32), rng.integers(0, V, (T, B)).astype(np.int32)
    before = rng.integers(0, V, (order - 2, B)).astype(np.int32)
    state = model.zero_state(B)

    def f():
        return model.loss_and_grads(x, y, state, before=before)[0] / B

    _, grads, _ = model.loss_and_grads(x, y, state, before=before)
    for name in ("direct", "hs.b" if softmax == "hs" else "out.b", "l0.W_h"):
        g = np.asarray(grads[name]).reshape(-1)
        param = model.params[name].reshape(-1)
        picks = np.flatnonzero(g)[:: max(1, np.count_nonzero(g) // 12)]
        assert len(picks) > 3
        for i in picks:
            keep = param[i]
            param[i] = keep + 1e-6
            up = f()
            param[i] = keep - 1e-6
            down = f()
            param[i] = keep
            assert g[i] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9), (name, i)


@pytest.mark.parametrize("softmax", ["full", "class", "hs"])
def test_probabilities_sum_to_one_and_match_targets(softmax):
    model = _model(softmax, order=4)
    rng = np.random.default_rng(5)
    x = rng.integers(0, V, (T, B)).astype(np.int32)
    top, _, _ = model.hidden_forward(x, model.zero_state(B))
    bases = model.contexts(x)
    full = model.next_logprobs(top.reshape(T * B, -1), bases.reshape(T * B, -1))
    assert np.allclose(np.exp(full).sum(axis=1), 1.0, atol=1e-12)
    y = rng.integers(0, V, (T, B)).astype(np.int32)
    picked = np.take_along_axis(full, y.reshape(-1, 1), axis=1).reshape(T, B)
    assert np.allclose(model.top_logprobs(top, y, bases), picked, atol=1e-12)
    plain = model.next_logprobs(top.reshape(T * B, -1))
    assert np.abs(full - plain).max() > 0.1          # the features do move the distribution


def test_contexts_do_not_depend_on_where_the_stream_is_cut():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 1000, (40, 2)).astype(np.int32)
    whole = contexts(ids, 5, 1 << 20)
    assert np.array_equal(contexts(ids[10:], 5, 1 << 20, before=ids[7:10]), whole[10:])
    assert np.array_equal(contexts(ids[:1], 5, 1 << 20), contexts(ids[:1], 5, 1 << 20, before=np.zeros((3, 2))))
    assert len(np.unique(whole)) > 0.95 * whole.size        # distinct contexts: distinct bases


def test_hash_is_the_same_compiled_and_interpreted():
    words = np.array([5, 0, 9999, 3], dtype=np.int64)
    out_py, out_jit = np.empty(4, dtype=np.int64), np.empty(4, dtype=np.int64)
    ngram_bases.py_func(words, (1 << 24) - 1, out_py)
    jit.compile_all()
    ngram_bases(words, (1 << 24) - 1, out_jit)
    assert np.array_equal(out_py, out_jit) and (out_py < 1 << 24).all()


@pytest.mark.parametrize("softmax", ["full", "class", "hs"])
def test_stream_scored_in_chunks_equals_one_pass(softmax):
    model = _model(softmax, order=4)
    ids = np.random.default_rng(9).integers(0, V, 60).astype(np.int32)
    inputs = np.concatenate(([0], ids[:-1])).astype(np.int32)[:, None]
    one, _ = chunked_logprobs(model, inputs, ids[:, None], chunk=256)
    pieces, state = [], None
    for a in range(0, 60, 7):                         # scored piece by piece, contexts carried in `before`
        lp, state = chunked_logprobs(model, inputs[a:a + 7], ids[a:a + 7, None], state, chunk=3,
                                     before=inputs[max(0, a - 2):a])
        pieces.append(lp)
    assert np.allclose(np.concatenate(pieces), one, rtol=1e-12)
    steps, _ = chunked_logprobs(model, inputs, ids[:, None], chunk=1)     # chunks shorter than the history
    assert np.allclose(steps, one, rtol=1e-12)
    assert stream_logprob(model, ids)[0] == pytest.approx(one.sum(), rel=1e-12)


@pytest.mark.parametrize("softmax", ["full", "class", "hs"])
def test_greedy_sampling_follows_the_features(softmax):
    model = _model(softmax, order=3, seed=4)
    for k, v in model.params.items():
        model.params[k] = v.astype(np.float32)
    model.params["direct"] *= 8                       # features that decide the argmax
    vocab = Vocab(tokens=["<eos>", "<unk>"] + [f"w{i}" for i in range(V - 2)])
    line = sample(model, vocab, n=1, temperature=0, max_length=6, seed=0)[0]
    read, want = [vocab.eos], []
    state = model.zero_state(1)
    for _ in range(6):                                # argmax of the exact distribution, step by step
        x = np.array([[read[-1]]], dtype=np.int32)
        top, _, state = model.hidden_forward(x, state)
        bases = model.contexts(x, np.array(read[:-1][-1:] or [0], dtype=np.int32)[:, None])
        token = int(np.argmax(model.next_logprobs(top[0], bases[0])))
        if token == vocab.eos:
            break
        want.append(token)
        read.append(token)
    assert line == vocab.decode(np.array(want))


def test_fill_scores_are_those_of_the_filled_lines():
    model = _model("full", order=4, seed=2)
    vocab = Vocab(tokens=["<eos>", "<unk>"] + [f"w{i}" for i in range(V - 2)])
    left, right = np.array([3, 4, 5]), np.array([6, 7])
    ids = np.array([8, 9, 10])
    got = exact_scores(model, left, right, ids)
    lines = [" ".join(vocab.tokens[t] for t in [*left, w, *right]) for w in ids]
    want = np.array([s.logprob for s in score_lines(model, vocab, lines)])
    assert np.allclose(got - got[0], want - want[0], rtol=1e-9)


def test_config_checks():
    with pytest.raises(RnngenError, match="--direct-order"):
        ModelConfig(vocab_size=V, direct_order=1)
    with pytest.raises(RnngenError, match="power of two"):
        ModelConfig(vocab_size=V, direct_order=3, direct_size=1000)
    with pytest.raises(RnngenError, match="forward models"):
        ModelConfig(vocab_size=V, direct_order=3, direction="bidirectional")
    with pytest.raises(RnngenError, match="at least the vocabulary size"):       # a slice would overrun d
        ModelConfig(vocab_size=V, direct_order=3, direct_size=16)
    with pytest.raises(RnngenError, match="needs n-gram features"):
        ModelConfig(vocab_size=V, direct_size=1 << 20)
    with pytest.raises(RnngenError, match="at most 2\\^32"):
        ModelConfig(vocab_size=V, direct_order=3, direct_size=1 << 33)
    big = ModelConfig(vocab_size=3_000_000, direct_order=3).with_direct_size(100)
    assert big.direct_size == 1 << 22                                             # the vocabulary's width
    assert default_direct_size(929_589, 4) == 1 << 24
    assert default_direct_size(100, 4) == 1 << 20 and default_direct_size(10**9, 4) == 1 << 25


def test_cli_trains_scores_samples_and_resumes(tmp_path):
    corpus = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(" ".join(f"w{i}" for i in rng.integers(0, 30, 8)) + "\n" for _ in range(300)))
    out = tmp_path / "m.npz"
    run = CliRunner().invoke
    args = ["train", str(corpus), "-o", str(out), "--hidden", "8", "--softmax", "class", "--direct-order", "4",
            "--direct-size", "2^16", "--epochs", "2", "-q", "--threads", "1"]
    r = run(cli, args)
    assert r.exit_code == 0, r.output
    ckpt = load(str(out))
    assert ckpt.model.config.direct_size == 1 << 16 and np.abs(ckpt.model.params["direct"]).max() > 0
    assert not any(k.startswith("optim.direct") for k in ckpt.resume)       # SGD apart: no Adam state
    r = run(cli, ["score", "-m", str(out), "w1 w2 w3"])
    assert r.exit_code == 0 and len(r.stdout.strip().split("\t")) >= 2, r.output
    r = run(cli, ["sample", "-m", str(out), "--n", "3", "--seed", "1"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3
    r = run(cli, ["train", str(corpus), "-o", str(out), "--resume", str(out), "--epochs", "3", "-q", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert load(str(out)).train["progress"]["epoch"] == 3
    for bad, message in ((["--direct-order", "1"], "--direct-order"), (["--direct-size", "1000"], "power of two"),
                         (["--direct-size", "lots"], "not a size"), (["--direct-size", "2^-1"], "not a size"),
                         (["--direct-size", "-4M"], "not a size"), (["--direct-size", "9^99999999"], "not a size"),
                         (["--direct-size", "16"], "at least the vocabulary size")):
        r = subprocess.run([sys.executable, "-m", "rnngen", "train", str(corpus), "-o", str(tmp_path / "x.npz"),
                            "--direct-order", "3", *bad], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_training_chunks_read_the_contexts_of_the_whole_rows():
    from rnngen.train import Chunks

    rows = np.random.default_rng(4).integers(0, V, (3, 20)).astype(np.int32)       # (B, L)
    chunks = Chunks(rows, rows, bptt=1)                                             # chunks shorter than the history
    whole = contexts(rows.T.copy(), 5, SIZE)
    for i in range(chunks.count):
        x, _ = chunks.chunk(i)
        assert np.array_equal(contexts(x, 5, SIZE, before=chunks.before(i, 3)), whole[i:i + 1])
