import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The BLAS calibration's cache (rnngen.blas.choice) goes to a folder of the test run's own,
# shared by the test processes and the rnngen commands they start, never the user's.
if "RNNGEN_CACHE_DIR" not in os.environ:
    os.environ["RNNGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnngen-test-cache-")

    @pytest.fixture(scope="session", autouse=True)
    def _remove_cache_dir():
        yield
        shutil.rmtree(os.environ["RNNGEN_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "agreement"

sys.path.insert(0, str(ROOT / "corpora"))


# The unit tier (`make test-unit`): the math, the data structures and the file formats, in
# this process only (no rnngen commands started, no training runs beyond a few steps).
UNIT_FILES = {"test_reference.py", "test_gradients.py", "test_optim.py", "test_class_softmax.py", "test_corpus.py",
              "test_checkpoint.py", "test_probabilities.py", "test_sample.py", "test_metrics.py", "test_textplot.py",
              "test_plot.py", "test_jit.py", "test_cloze.py", "test_budget.py", "test_hsoftmax.py",
              "test_maxent.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in UNIT_FILES:
            item.add_marker(pytest.mark.unit)


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

