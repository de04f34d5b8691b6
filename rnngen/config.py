"""Configuration: what a model is (:class:`ModelConfig`) and how it is trained (:class:`TrainConfig`).

The bottom of the package: this module imports nothing of rnngen's, so every other module
may import it. Beside the two dataclasses it holds what they are checked against, as plain
constants: the names of the cells, output layers and optimisers (``rnngen.cells``,
``rnngen.softmax`` and ``rnngen.optim`` implement them under these names) and the default
learning rates. It also lays out a model's parameters (names and shapes follow from the
configuration alone, so a checkpoint is checked before any array is read), and defines
RnngenError, the one exception users see, here so that every module can raise it
(``rnngen.errors`` is its public name).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace


class RnngenError(Exception):
    """A problem with the user's input, options or files (never a bug in rnngen)."""


CELL_NAMES = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}           # gate blocks in a layer's W_x, W_h and b
STATE_PARTS = {"rnn": 1, "gru": 1, "lstm": 2}     # arrays a layer carries between chunks: h (and c)
ACTIVATIONS = ("tanh", "relu")                    # of the vanilla RNN
SOFTMAX_NAMES = ("full", "class", "hs")
DIRECTIONS = ("forward", "bidirectional")         # a language model, or a cloze model (rnngen.cloze)
OPTIMIZER_NAMES = ("sgd", "adagrad", "adam")
DEFAULT_LR = {"sgd": 1.0, "adagrad": 0.1, "adam": 0.002}
MAX_DIRECT_ORDER = 6                              # longest n-gram of the maxent features
MAX_DIRECT_SIZE = 1 << 32                         # hashed weights: 16 GB of float32
MAX_DURATION = 366 * 86400.0                      # --max-time


# A duration: a bare number of seconds, or numbers with units, largest first ("1h30m", "1.5h").
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``10m``, ``2h``, ``1h30m``, ``1.5h`` (each unit once,
    largest first). Raises ValueError with a short reason for anything else."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"{text!r} is not a duration: seconds must be finite and not negative")
        return _at_most_a_year(text, seconds)
    parts = _DURATION_PART.findall(text)
    units = [unit for _, unit in parts]
    if not parts or "".join(n + u for n, u in parts) != text or units != sorted(set(units), key="hms".index):
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 90s, 10m, 2h, 1h30m, 1.5h)")
    return _at_most_a_year(text, sum(float(n) * _SECONDS[u] for n, u in parts))


def _at_most_a_year(text: str, seconds: float) -> float:
    if seconds > MAX_DURATION:                  # beyond it, planned epochs would be numbers of hundreds of digits
        raise ValueError(f"{text!r} is not a duration rnngen plans for: at most 366 days")
    return seconds


def known_fields(cls, data: dict) -> dict:
    """The entries of ``data`` (read from JSON) that are fields of the dataclass ``cls``: a
    checkpoint written by another version of rnngen may hold more, or fewer."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def layer_shapes(cell: str, n_in: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """One recurrent layer's parameters: input weights W_x (n_in, G·H), recurrent weights
    W_h (H, G·H) and bias b (G·H,), one block of H columns per gate; the GRU keeps b_hn (H,)
    apart because its reset gate multiplies it (see ``rnngen.cells.GRUCell``)."""
    gh = GATES[cell] * hidden
    shapes = {"W_x": (n_in, gh), "W_h": (hidden, gh), "b": (gh,)}
    if cell == "gru":
        shapes["b_hn"] = (hidden,)
    return shapes


def frequency_classes(counts, n_classes: int) -> list[int]:
    """Class boundaries over ids 0..V-1 for token ``counts`` (an array): each class holds
    about 1/C of the token mass (frequency binning); returns C+1 increasing ids from 0 to V."""
    # NumPy is imported here, not at the top: every command imports this module (through
    # rnngen.errors), `rnngen --help` too, which starts without NumPy.
    import numpy as np

    V = len(counts)
    if n_classes >= V:
        return list(range(V + 1))
    n_classes = max(1, n_classes)
    cum = np.cumsum(np.asarray(counts, dtype=np.float64) + 1e-3)   # + epsilon: unseen ids
    cut = np.searchsorted(cum / cum[-1], np.arange(1, n_classes) / n_classes, side="right") + 1
    bounds = np.unique(np.concatenate(([0], np.clip(cut, 1, V - 1), [V])))
    return [int(b) for b in bounds]


def default_direct_size(tokens: int, order: int) -> int:
    """A hash size for n-gram features on ``tokens`` training tokens: the power of two at or
    above 4 weights per (token, context order), between 2**20 and 2**25 (4 to 128 MB)."""
    want = max(1, 4 * tokens * max(order - 1, 1))
    return int(min(max(1 << (want - 1).bit_length(), 1 << 20), 1 << 25))


def huffman_tree(counts) -> list[int]:
    """A binary Huffman tree over ids 0..V-1 for token ``counts``: frequent words get short
    paths. Returns the children of its V-1 inner nodes, flattened: node n's are entries 2n
    and 2n+1, an id < V a word, V + m inner node m. Nodes are made bottom-up, so a child's
    id is below its parent's and node V-2 is the root. Ties go to the lower id."""
    import heapq

    V = len(counts)
    heap = [(float(c), i) for i, c in enumerate(counts)]      # (count, id): a tie takes the lower id
    heapq.heapify(heap)
    children = []
    for n in range(V - 1):
        (c0, a), (c1, b) = heapq.heappop(heap), heapq.heappop(heap)
        children += [a, b]
        heapq.heappush(heap, (c0 + c1, V + n))                 # inner node n merges the two rarest
    return children


def check_tree(tree, vocab_size: int) -> bool:
    """Is ``tree`` a binary tree in :func:`huffman_tree`'s form over ``vocab_size`` words?
    Every node but the root (id 2V-2) is the child of exactly one inner node, one made after
    it: so each word's parents lead, ids rising, to the root."""
    V = vocab_size
    if not (isinstance(tree, list) and len(tree) == 2 * (V - 1) and all(type(i) is int for i in tree)):
        return False
    return sorted(tree) == list(range(2 * V - 2)) and all(c < V + k // 2 for k, c in enumerate(tree))


@dataclass
class ModelConfig:
    """Architecture. ``embed`` 0 means "same as hidden"."""

    vocab_size: int
    cell: str = "rnn"
    hidden: int = 128
    layers: int = 1
    embed: int = 0
    activation: str = "tanh"
    dropout: float = 0.0
    tie_weights: bool = False
    softmax: str = "full"
    classes: int = 0                                   # class softmax: 0 = about sqrt(vocab)
    class_bounds: list = field(default_factory=list)   # C+1 ids, filled from word counts
    tree: list = field(default_factory=list)           # hs: the Huffman tree (huffman_tree), from word counts
    direction: str = "forward"                         # "bidirectional": a cloze model (rnngen.cloze)
    direct_order: int = 0                              # hashed n-gram maxent features (rnngen.maxent): n-gram
                                                       # order, the predicted word included; 0 = none
    direct_size: int = 0                               # their hashed weights: a power of two (0 = by corpus size)

    def __post_init__(self):
        if self.cell not in CELL_NAMES:
            raise RnngenError(f"unknown cell {self.cell!r} (choose from {', '.join(CELL_NAMES)})")
        if self.activation not in ACTIVATIONS:
            raise RnngenError(f"unknown activation {self.activation!r} (choose tanh or relu)")
        for name in ("vocab_size", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise RnngenError(f"--{name.replace('_', '-')} must be at least 1")
        if self.embed < 0:
            raise RnngenError("--embed must be at least 1 (or 0 for the hidden size)")
        if not 0.0 <= self.dropout < 1.0:
            raise RnngenError("--dropout must be in [0, 1)")
        if self.tie_weights and self.embed_size != self.hidden:
            raise RnngenError("--tie-weights needs --embed equal to --hidden")
        if self.softmax not in SOFTMAX_NAMES:
            raise RnngenError(f"unknown softmax {self.softmax!r} (choose from {', '.join(SOFTMAX_NAMES)})")
        if self.direction not in DIRECTIONS:
            raise RnngenError(f"unknown direction {self.direction!r} (choose from {', '.join(DIRECTIONS)})")
        if self.direct_order < 0 or self.direct_order == 1 or self.direct_order > MAX_DIRECT_ORDER:
            raise RnngenError(f"--direct-order must be 0 (no n-gram features) or 2 to {MAX_DIRECT_ORDER}")
        if self.direct_size and not (self.direct_size >= 1 and self.direct_size & (self.direct_size - 1) == 0):
            raise RnngenError("--direct-size must be a power of two (e.g. 16M = 2**24)")
        if self.direct_size and not self.direct_order:
            raise RnngenError("--direct-size needs n-gram features (--direct-order 2 or more)")
        if self.direct_size > MAX_DIRECT_SIZE:
            raise RnngenError(f"--direct-size must be at most 2^{MAX_DIRECT_SIZE.bit_length() - 1} "
                              f"({MAX_DIRECT_SIZE * 4 >> 30} GB of weights)")
        if self.direct_size and self.direct_size < self.vocab_size:     # a logit row's slice wraps at most once
            raise RnngenError(f"--direct-size must be at least the vocabulary size ({self.vocab_size:,})")
        if self.direct_order and self.bidirectional:
            raise RnngenError("n-gram features (--direct-order) work with forward models only")
        b = self.class_bounds
        if self.classes < 0:
            raise RnngenError("--classes must be at least 1 (or 0 for about sqrt(vocabulary))")
        if self.softmax == "class" and b and not (
                isinstance(b, list) and len(b) >= 2 and all(isinstance(i, int) for i in b)
                and b[0] == 0 and b[-1] == self.vocab_size and all(x < y for x, y in zip(b, b[1:]))):
            raise RnngenError("class softmax needs class bounds increasing from 0 to the vocabulary size")
        if self.softmax == "hs" and self.tie_weights:
            raise RnngenError("--tie-weights needs --softmax full or class (hs has no word vectors to share)")
        if self.softmax == "hs" and self.vocab_size < 2:
            raise RnngenError("--softmax hs needs a vocabulary of at least 2 tokens")
        if self.softmax == "hs" and self.tree and not check_tree(self.tree, self.vocab_size):
            raise RnngenError("hs softmax needs a binary tree over the vocabulary (the model's tree is corrupt)")

    @property
    def embed_size(self) -> int:
        return self.embed or self.hidden

    @property
    def bidirectional(self) -> bool:
        return self.direction == "bidirectional"

    @property
    def n_classes(self) -> int:
        """Word classes of the class softmax, once :meth:`with_classes` has set their bounds."""
        if not self.class_bounds:
            raise RnngenError("class softmax needs class_bounds: use ModelConfig.with_classes(counts)")
        return len(self.class_bounds) - 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        return cls(**known_fields(cls, data))

    def with_classes(self, counts) -> ModelConfig:
        """For the class softmax: bin the vocabulary by these token counts (ids 0..V-1)."""
        if self.softmax != "class" or self.class_bounds:
            return self
        n = self.classes or max(1, round(math.sqrt(self.vocab_size)))
        return replace(self, class_bounds=frequency_classes(counts, n))

    def with_direct_size(self, tokens: int) -> ModelConfig:
        """For n-gram features without a hash size: :func:`default_direct_size` of the corpus."""
        if not self.direct_order or self.direct_size:
            return self
        size = max(default_direct_size(tokens, self.direct_order), 1 << (self.vocab_size - 1).bit_length())
        return replace(self, direct_size=size)

    @property
    def inner_nodes(self) -> int:
        """Inner nodes of the hs tree (V - 1), once :meth:`with_tree` has built it."""
        if not self.tree:
            raise RnngenError("hs softmax needs its tree: use ModelConfig.with_tree(counts)")
        return len(self.tree) // 2

    def with_tree(self, counts) -> ModelConfig:
        """For the hierarchical softmax: the Huffman tree of these token counts (ids 0..V-1)."""
        if self.softmax != "hs" or self.tree:
            return self
        return replace(self, tree=huffman_tree(counts))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in a fixed order: the embedding, each layer's
        (``l0.W_x``, ...), a bidirectional model's backward stack's (``r0.W_x``, ...), then
        the output layer's (:meth:`output_shapes`)."""
        shapes = {"embed": (self.vocab_size, self.embed_size)}
        for prefix in ("l", "r") if self.bidirectional else ("l",):
            n_in = self.embed_size
            for layer in range(self.layers):
                for k, s in layer_shapes(self.cell, n_in, self.hidden).items():
                    shapes[f"{prefix}{layer}.{k}"] = s
                n_in = self.hidden
        shapes.update(self.output_shapes())
        return shapes

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The output layer's parameters: V (``out.W``, the embedding's transpose when tied)
        and c of softmax(h V + c); the class softmax adds its class layer ``cls.W``, ``cls.b``.
        The hierarchical softmax has instead one row ``hs.W[n]`` and bias ``hs.b[n]`` per inner
        node n of its tree (rnngen.hsoftmax)."""
        if self.softmax == "hs":
            shapes = {"hs.W": (self.inner_nodes, self.hidden), "hs.b": (self.inner_nodes,)}
        else:
            shapes = {} if self.tie_weights else {"out.W": (self.hidden, self.vocab_size)}
            shapes["out.b"] = (self.vocab_size,)
        if self.softmax == "class":
            shapes["cls.W"] = (self.hidden, self.n_classes)
            shapes["cls.b"] = (self.n_classes,)
        if self.direct_order:
            if not self.direct_size:
                raise RnngenError("n-gram features need direct_size: use ModelConfig.with_direct_size(tokens)")
            shapes["direct"] = (self.direct_size,)
        return shapes

    def state_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The recurrent state carried between chunks: (layers, state parts, batch, hidden)."""
        return (self.layers, STATE_PARTS[self.cell], batch, self.hidden)


@dataclass
class TrainConfig:
    """How to train; saved in the checkpoint so ``--resume`` continues the same run."""

    epochs: int = 10
    batch_size: int = 20
    bptt: int = 35
    optimizer: str = "adam"
    lr: float = 0.0                  # 0 means the optimiser's default (DEFAULT_LR)
    lr_decay: float = 0.5            # factor applied when validation stops improving
    decay_after: int = 0             # from this epoch on, apply lr_decay after every epoch; 0 = never
    clip: float = 5.0                # global gradient-norm clip; 0 disables
    warmup: int = 0                  # the first steps' rate rises linearly to lr over this many steps; 0 = none
    seed: int = 0
    patience: int = 0                # stop after this many epochs without improvement; 0 = never
    max_time: float = 0.0            # seconds of training, 0 = no limit
    max_steps: int = 0               # optimiser steps, 0 = no limit
    checkpoint_every: float = 600.0  # seconds between periodic checkpoints, 0 = only per epoch
    log_file: str = ""               # metrics log (rnngen.metrics), "" = none; kept so --resume appends to it
    log_every: float = 10.0          # seconds between the metrics log's periodic records, 0 = only at events
    direct_lr: float = 0.1           # SGD learning rate of the n-gram maxent weights, per token; decays with lr

    def __post_init__(self):
        if self.optimizer not in OPTIMIZER_NAMES:
            raise RnngenError(f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZER_NAMES)})")
        for name in ("epochs", "batch_size", "bptt"):
            if getattr(self, name) < 1:
                raise RnngenError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("lr", "clip", "patience", "max_time", "max_steps", "checkpoint_every", "decay_after",
                     "log_every", "direct_lr", "warmup"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise RnngenError(f"--{name.replace('_', '-')} must be a non-negative number")
        if not 0 < self.lr_decay <= 1:
            raise RnngenError("--lr-decay must be in (0, 1]")
        if "\0" in self.log_file:
            raise RnngenError("--log-file must not contain a NUL character")
        if self.lr == 0:
            self.lr = DEFAULT_LR[self.optimizer]

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        return cls(**known_fields(cls, data))
