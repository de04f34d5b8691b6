"""The hierarchical softmax (--softmax hs): exact gradients, a proper distribution, its tree."""

import itertools
import math

import numpy as np
import pytest
from test_gradients import V, chunk_loss_check, rel_error

from rnngen.config import check_tree, huffman_tree
from rnngen.errors import RnngenError
from rnngen.hsoftmax import HierarchicalSoftmax
from rnngen.model import Model, ModelConfig
from rnngen.rowgrad import RowGrad
from rnngen.score import stream_logprob

COUNTS = np.array([50, 10, 30, 20, 10, 5, 5, 3, 2])


def hs_config(vocab=V, **kw) -> ModelConfig:
    counts = COUNTS[:vocab] if vocab <= len(COUNTS) else np.arange(vocab, 0, -1)
    return ModelConfig(vocab_size=vocab, softmax="hs", **kw).with_tree(counts)


def hs_model(vocab=9, hidden=6, seed=3, dtype=np.float64, **kw):
    model = Model.init(hs_config(vocab, hidden=hidden, **kw), seed=seed, dtype=dtype)
    for v in model.params.values():
        v += np.random.default_rng(seed).normal(0, 0.5, v.shape).astype(dtype)
    return model


@pytest.mark.parametrize("cell,layers,dropout", [("rnn", 1, False), ("lstm", 2, True), ("gru", 1, False)])
def test_hs_gradients(cell, layers, dropout):
    chunk_loss_check(hs_config(cell=cell, hidden=4, embed=3, layers=layers, dropout=0.3 if dropout else 0.0),
                     with_dropout=dropout)


def test_sparse_and_dense_weight_gradients_agree(monkeypatch):
    model = hs_model(vocab=9, hidden=5)
    rng = np.random.default_rng(1)
    top, targets = rng.standard_normal((7, 5)), np.array([0, 0, 3, 8, 5, 5, 1])
    logp, dtop, dense = model.output.loss_grad(model.params, top, targets, 0.5)
    monkeypatch.setattr(HierarchicalSoftmax, "SPARSE_MIN", 0)
    logp2, dtop2, sparse = model.output.loss_grad(model.params, top, targets, 0.5)
    assert isinstance(sparse["hs.W"], RowGrad) and isinstance(dense["hs.W"], np.ndarray)
    np.testing.assert_array_equal(np.asarray(sparse["hs.W"]), dense["hs.W"])
    np.testing.assert_array_equal(dtop, dtop2)
    np.testing.assert_array_equal(logp, logp2)
    np.testing.assert_array_equal(sparse["hs.b"], dense["hs.b"])
    touched = model.output.nodes[np.concatenate([np.arange(model.output.starts[w], model.output.starts[w + 1])
                                                 for w in targets])]
    np.testing.assert_array_equal(sparse["hs.W"].rows, np.unique(touched))


def test_output_layer_alone_against_finite_differences():
    """dL/dtop, dL/dW, dL/db of L = -scale Σ log p, with a scale, directly on the layer."""
    from numeric import numeric_grad

    model = hs_model(vocab=9, hidden=4)
    rng = np.random.default_rng(2)
    top, targets, p = rng.standard_normal((6, 4)), rng.integers(0, 9, 6), model.params

    def f():
        return -0.3 * model.output.logprobs(p, top, targets).sum()

    _, dtop, grads = model.output.loss_grad(p, top, targets, 0.3)
    for name, arr, ana in [("top", top, dtop), ("hs.W", p["hs.W"], grads["hs.W"]), ("hs.b", p["hs.b"], grads["hs.b"])]:
        assert rel_error(numeric_grad(f, arr), ana) < 1e-6, name


def test_hs_sums_to_one():
    model = hs_model(vocab=5, hidden=6)
    total = sum(math.exp(stream_logprob(model, s)[0]) for s in itertools.product(range(5), repeat=4))
    assert total == pytest.approx(1.0, abs=1e-9)
    model = hs_model(vocab=40, hidden=6)
    top, _, _ = model.hidden_forward(np.arange(12, dtype=np.int32).reshape(4, 3), model.zero_state(3))
    full = model.next_logprobs(top.reshape(12, -1))
    assert np.allclose(np.exp(full).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    targets = np.arange(12) * 3
    np.testing.assert_allclose(full[np.arange(12), targets],
                               model.output.logprobs(model.params, top.reshape(12, -1), targets), rtol=1e-12)


def test_float32_matches_float64():
    m64 = hs_model(vocab=40, hidden=16)
    m32 = Model(m64.config, {k: v.astype(np.float32) for k, v in m64.params.items()})
    ids = np.random.default_rng(3).integers(0, 40, size=(8, 4)).astype(np.int32)
    l64, g64, _ = m64.loss_and_grads(ids[:-1], ids[1:], m64.zero_state(4))
    l32, g32, _ = m32.loss_and_grads(ids[:-1], ids[1:], m32.zero_state(4))
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    for k in g64:
        a, b = np.asarray(g32[k]), np.asarray(g64[k])
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4 * max(np.abs(b).max(), 1e-3), err_msg=k)
    top = np.random.default_rng(4).standard_normal((3, 16))
    np.testing.assert_allclose(m32.next_logprobs(top.astype(np.float32)), m64.next_logprobs(top), atol=1e-4)


def test_direct_features_shift_each_nodes_logit_and_take_an_sgd_step():
    """With K hashes per row, node n's logit gains Σ_k direct[(base_k + n) & mask]; the
    gradient of those weights is scale · (σ(z_n) - [first child]) at each node of the path."""
    model = hs_model(vocab=9, hidden=4)
    out, p = model.output, dict(model.params)
    rng = np.random.default_rng(5)
    top, targets = rng.standard_normal((3, 4)), np.array([2, 7, 0])
    bases = rng.integers(0, 1 << 40, (3, 2))
    p["direct"] = rng.standard_normal(16)
    shift = np.array([[p["direct"][(bases[i] + n) & 15].sum() for n in range(8)] for i in range(3)])
    plain = {**p, "hs.b": np.zeros(8)}                              # the same logits through the bias
    for i in range(3):
        shifted = {**p, "hs.b": p["hs.b"] + shift[i]}
        np.testing.assert_allclose(out.all_logprobs(p, top[i:i + 1], bases[i:i + 1]),
                                   out.all_logprobs(shifted, top[i:i + 1]), rtol=1e-12)
        np.testing.assert_allclose(out.logprobs(p, top[i:i + 1], targets[i:i + 1], bases[i:i + 1]),
                                   out.logprobs(shifted, top[i:i + 1], targets[i:i + 1]), rtol=1e-12)
    assert not np.allclose(out.all_logprobs(p, top, bases), out.all_logprobs(plain, top))
    before = p["direct"].copy()
    logp, _, grads = out.loss_grad(p, top[:1], targets[:1], 1.0, bases=bases[:1])
    grads["direct"].sgd(p["direct"], 0.1)
    expected = before.copy()
    for j in range(out.starts[2], out.starts[3]):                    # row 0's target 2: its path
        n = out.nodes[j]
        z = top[0] @ p["hs.W"][n] + p["hs.b"][n] + before[(bases[0] + n) & 15].sum()
        g = 1 / (1 + math.exp(-z)) - (out.codes[j] == 0)
        np.subtract.at(expected, (bases[0] + n) & 15, 0.1 * g)
    np.testing.assert_allclose(p["direct"], expected, rtol=1e-12)
    np.testing.assert_allclose(logp, out.logprobs({**p, "direct": before}, top[:1], targets[:1], bases[:1]))


def test_huffman_tree_gives_frequent_words_short_paths():
    counts = np.random.default_rng(0).zipf(1.5, 300).astype(float)
    cfg = ModelConfig(vocab_size=300, softmax="hs").with_tree(counts)
    assert check_tree(cfg.tree, 300)
    lengths = np.diff(HierarchicalSoftmax(cfg).starts)
    order = np.argsort(-counts, kind="stable")
    assert np.all(np.diff(lengths[order]) >= 0) or np.all(lengths[order][:10] <= lengths[order][-10:].min())
    p = counts / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    mean = HierarchicalSoftmax(cfg).mean_path(counts)
    assert entropy <= mean < entropy + 1                            # Huffman's bound
    assert huffman_tree([3]) == [] and huffman_tree([1, 1]) == [0, 1]


@pytest.mark.parametrize("tree", [[0, 1, 2, 3, 4, 5, 6, 8], [0, 1, 2, 3, 4, 5, 6], [0, 1, 1, 3, 4, 5, 6, 7],
                                  [0, 6, 2, 3, 4, 5, 1, 7], [0, 1, 2, 3, 4, 5, 6, True], [0, 1, 2, 3, 4, 5, 6, 7.0],
                                  "01234567"])
def test_a_corrupt_tree_is_refused(tree):
    assert check_tree([0, 1, 2, 3, 4, 5, 6, 7], 5)
    with pytest.raises(RnngenError, match=r"^hs softmax needs a binary tree over the vocabulary"):
        ModelConfig(vocab_size=5, softmax="hs", tree=tree)


@pytest.mark.parametrize("make", [Model.init, HierarchicalSoftmax, ModelConfig.param_shapes])
def test_hs_without_a_tree_says_how_to_get_one(make):
    with pytest.raises(RnngenError, match=r"^hs softmax needs its tree: use ModelConfig\.with_tree\(counts\)$"):
        make(ModelConfig(vocab_size=5, softmax="hs"))


def test_bad_combinations_are_one_line_errors():
    with pytest.raises(RnngenError, match="^--tie-weights needs --softmax full or class"):
        ModelConfig(vocab_size=5, softmax="hs", tie_weights=True)
    with pytest.raises(RnngenError, match="^--softmax hs needs a vocabulary of at least 2"):
        ModelConfig(vocab_size=1, softmax="hs")
