import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "agreement"

sys.path.insert(0, str(ROOT / "corpora"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A small word model trained briefly on the project corpus, shared by read-only tests."""
    from rnngen.model import ModelConfig
    from rnngen.train import TrainConfig, prepare_data, train

    out = tmp_path_factory.mktemp("model") / "tiny.npz"
    vocab, tr, va = prepare_data([str(CORPUS / "train.txt")], str(CORPUS / "valid.txt"))
    train(tr[:20000], va[:2000], vocab, ModelConfig(vocab_size=len(vocab), hidden=24),
          TrainConfig(epochs=1, seed=3), str(out), log=lambda m: None)
    return out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNGEN_MODEL", raising=False)
    return tmp_path

