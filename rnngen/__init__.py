"""rnngen: recurrent-neural-network language models on the CPU.

The Python API is the same functions the command line calls::

    from rnngen import load_model, score_lines, sample, train, prepare_data
    ckpt = load_model("model.npz")                  # model + vocabulary + history
    score_lines(ckpt.model, ckpt.vocab, ["the dog barks ."])
    sample(ckpt.model, ckpt.vocab, n=3, seed=1)
    fill_lines(ckpt.model, ckpt.vocab, ["the dog ___ ."], top_k=5)   # which token fits the blank
    nll, grads, state = ckpt.model.loss_and_grads(inputs, targets, ckpt.model.zero_state(B))

Names are imported lazily so that ``rnngen --help`` does not pay for NumPy and Numba.
"""

__version__ = "0.1.0"

_API = {
    "load_model": ("checkpoint", "load"),
    "save_model": ("checkpoint", "save"),
    "Checkpoint": ("checkpoint", "Checkpoint"),
    "Model": ("model", "Model"),
    "ModelConfig": ("config", "ModelConfig"),
    "TrainConfig": ("config", "TrainConfig"),
    "train": ("train", "train"),
    "prepare_data": ("train", "prepare_data"),
    "Vocab": ("vocab", "Vocab"),
    "score_lines": ("score", "score_lines"),
    "stream_logprob": ("score", "stream_logprob"),
    "perplexity": ("score", "perplexity"),
    "sample": ("sample", "sample"),
    "fill_lines": ("fill", "fill_lines"),
    "pseudo_log_likelihood": ("fill", "pseudo_log_likelihood"),
    "ClozeModel": ("cloze", "ClozeModel"),
    "RnngenError": ("errors", "RnngenError"),
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(f"rnngen.{module}"), attr)
    raise AttributeError(f"module 'rnngen' has no attribute {name!r}")
