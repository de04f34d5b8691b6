"""Training on the project corpus gets close to the source's entropy floor and beats a bigram."""

import math

import generate  # corpora/generate.py: the source of the corpus, with an exact parser
from conftest import CORPUS

from rnngen.model import ModelConfig
from rnngen.score import stream_logprob
from rnngen.train import TrainConfig, prepare_data, train


def test_rnn_reaches_floor_and_beats_bigram(tmp_path):
    train_lines = (CORPUS / "train.txt").read_text().splitlines()
    valid_lines = (CORPUS / "valid.txt").read_text().splitlines()
    n_tokens = generate.count_tokens(valid_lines)
    floor = -sum(math.log(generate.inside(line)[0]) for line in valid_lines) / n_tokens
    bigram = generate.bigram_cross_entropy(train_lines, valid_lines)

    vocab, tr, va = prepare_data([str(CORPUS / "train.txt")], str(CORPUS / "valid.txt"))
    ckpt = train(tr, va, vocab, ModelConfig(vocab_size=len(vocab), hidden=64),
                 TrainConfig(epochs=6, seed=0), str(tmp_path / "m.npz"), log=print)
    logprob, n = stream_logprob(ckpt.model, va)
    xent = -logprob / n
    print(f"floor {floor:.4f}  rnn {xent:.4f}  bigram {bigram:.4f} nats/token")
    assert n == n_tokens
    assert xent < 1.10 * floor
    assert xent < bigram - 0.25
