"""Lanes: side tasks on a worker thread, and a training step spread over two of them."""

import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CORPUS
from draws import assert_same_draws, words

from rnngen import blas
from rnngen.blas import threads as blas_threads
from rnngen.checkpoint import load
from rnngen.cli import cli
from rnngen.lanes import SERIAL, Lanes, training_lanes
from rnngen.model import Model


def test_one_lane_runs_each_task_at_once_on_the_caller():
    seen = []
    with SERIAL:
        SERIAL.submit(seen.append, threading.get_ident())
        assert seen == [threading.get_ident()]


def test_two_lanes_share_the_tasks_and_finish_them_all_inside_the_block():
    lanes, done, where = Lanes(2), [], {}
    started, gate = threading.Event(), threading.Event()

    def task(i):
        where[i] = threading.get_ident()
        if i == 0:
            started.set()
            gate.wait(5)                   # the worker is held here until task 1 runs
        if i == 1:
            gate.set()
        done.append(i)

    with lanes:
        lanes.submit(task, 0)
        assert started.wait(5)
        for i in range(1, 20):
            lanes.submit(task, i)
    assert sorted(done) == list(range(20))
    assert where[0] != threading.get_ident() and where[1] == threading.get_ident()


def test_map_rows_covers_every_row_once():
    lanes, rows = Lanes(2), np.zeros(101, dtype=int)

    def mark(a, b):
        rows[a:b] += 1

    lanes.map_rows(mark, 101)
    assert (rows == 1).all()
    assert lanes.split(10, per_lane=4) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6), (6, 7), (7, 8), (8, 10)]
    assert SERIAL.split(10, per_lane=4) == [(0, 10)]


def test_a_task_error_is_raised_at_the_end_of_the_block():
    lanes = Lanes(2)

    def fail():
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        with lanes:
            lanes.submit(fail)
    with lanes:                            # and the lanes still work afterwards
        lanes.submit(lambda: None)


def test_an_error_in_the_block_drops_the_tasks_still_queued():
    lanes, ran, gate = Lanes(2), [], threading.Event()
    with pytest.raises(KeyError):
        with lanes:
            lanes.submit(gate.wait, 5)     # keeps the worker busy for 0.2 s
            for i in range(5):
                lanes.submit(ran.append, i)
            threading.Timer(0.2, gate.set).start()
            raise KeyError("step failed")
    assert ran == []


def test_full_and_class_softmax_training_take_one_lane_per_thread_and_blas_on_one():
    before = blas.thread_count()
    try:
        lanes = training_lanes(2, "full")
        assert lanes.count == 2 and blas.thread_count() == 1
        assert training_lanes(2, "full") is lanes           # one worker thread per process, made once
        with blas.numpy_threads(2):        # validation inside training: BLAS splits again
            assert blas.thread_count() == 2
        assert blas.thread_count() == 1
        assert training_lanes(2, "class") is lanes and blas.thread_count() == 1     # classes split over lanes
        assert training_lanes(2, "hs") is SERIAL and blas.thread_count() == 2
        assert training_lanes(1, "full") is SERIAL and blas.thread_count() == 1
    finally:
        blas.set_threads(before)


def _train(folder, threads: str):
    out = folder / f"m{threads}.npz"
    result = CliRunner().invoke(cli, ["train", str(folder / "c.txt"), "--hidden", "16", "--layers", "2", "--cell",
                                      "lstm", "--epochs", "1", "--seed", "4", "--threads", threads, "-q",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    return load(str(out))


def test_training_on_two_lanes_is_reproducible_and_matches_one(tmp_path, monkeypatch):
    head = "\n".join((CORPUS / "train.txt").read_text().splitlines()[:300]) + "\n"
    (tmp_path / "c.txt").write_text(head)
    counts = []
    real_step = Model.loss_and_grads

    def step(self, inputs, targets, state, masks=None, lanes=SERIAL, **more):
        counts.append(lanes.count)
        return real_step(self, inputs, targets, state, masks, lanes, **more)

    monkeypatch.setattr(Model, "loss_and_grads", step)
    one = _train(tmp_path, "1")
    assert set(counts) == {1}
    counts.clear()
    two = _train(tmp_path, "2")
    assert set(counts) == {2}                               # every step of --threads 2 ran on two lanes
    again = _train(tmp_path, "2")
    for name, value in two.model.params.items():
        # Same --seed, library and threads: the same model by design, to the bit.
        np.testing.assert_array_equal(value, again.model.params[name])
        np.testing.assert_allclose(value, one.model.params[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_three_layers_in_halves_match_the_serial_step(cell):
    """The forward pass in halves hands each layer's first half to the worker in turn; with
    three layers that is two hand-overs before the output layer's."""
    from rnngen.model import ModelConfig

    model = Model.init(ModelConfig(vocab_size=11, cell=cell, hidden=6, layers=3, dropout=0.2), seed=2,
                       dtype=np.float64)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 11, size=(8, 4)).astype(np.int32)
    masks = model.dropout_masks(rng, 7, 4)
    state = rng.normal(0, 0.5, model.zero_state(4).shape)
    serial = model.loss_and_grads(ids[:-1], ids[1:], state, masks)
    on_lanes = model.loss_and_grads(ids[:-1], ids[1:], state, masks, Lanes(2))
    assert serial[0] == pytest.approx(on_lanes[0], rel=1e-12)
    np.testing.assert_allclose(serial[2], on_lanes[2], rtol=1e-12)
    for name, grad in serial[1].items():
        np.testing.assert_allclose(grad, on_lanes[1][name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_an_error_on_the_calling_thread_drops_the_tasks_still_queued():
    """The calling thread runs a failing task while helping at the end of the block: the
    tasks queued behind it must not run later, on the worker or in the next block."""
    lanes, ran = Lanes(2), []
    started, gate = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(5)

    def fail():
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        with lanes:
            lanes.submit(hold)                 # the worker is busy: the caller takes the next task
            assert started.wait(5)
            lanes.submit(fail)
            for i in range(3):
                lanes.submit(ran.append, i)
            threading.Timer(0.2, gate.set).start()
    with lanes:
        lanes.submit(ran.append, 9)
    assert ran == [9]


def test_catch_up_runs_queued_tasks_here_until_at_most_keep_are_left():
    lanes, gate, ran = Lanes(2), threading.Event(), []
    with lanes:
        lanes.submit(gate.wait, 5)               # holds the worker: the rest stays queued
        time.sleep(0.05)
        for i in range(6):
            lanes.submit(lambda i=i: ran.append((i, threading.current_thread() is threading.main_thread())))
        lanes.catch_up(keep=2)
        assert ran == [(0, True), (1, True), (2, True), (3, True)]   # oldest first, on this thread
        gate.set()
    assert sorted(i for i, _ in ran) == list(range(6))
    SERIAL.catch_up(keep=0)                      # one lane: tasks already ran at submit


def test_an_error_in_catch_up_is_raised_there_and_the_block_drops_the_rest():
    lanes, gate, ran = Lanes(2), threading.Event(), []
    with pytest.raises(ZeroDivisionError):
        with lanes:
            lanes.submit(gate.wait, 5)
            time.sleep(0.05)
            lanes.submit(lambda: 1 / 0)
            lanes.submit(ran.append, 1)
            try:
                lanes.catch_up(keep=0)
            finally:
                gate.set()
    assert ran == []


def test_sampling_many_lines_splits_them_over_the_lanes_and_matches_one_thread(tmp_path, monkeypatch):
    """`sample --n 9 --threads 2`: the kernels' BLAS on one thread, the lines in one kernel call
    per lane (5 + 4), the same lines as with --threads 1; one line gives the kernels the threads."""
    from rnngen import sample as sampling

    head = "\n".join((CORPUS / "train.txt").read_text().splitlines()[:300]) + "\n"
    (tmp_path / "c.txt").write_text(head)
    model = tmp_path / "m.npz"
    trained = CliRunner().invoke(cli, ["train", str(tmp_path / "c.txt"), "--hidden", "16", "--epochs", "1",
                                       "--seed", "4", "--threads", "1", "-q", "-o", str(model)])
    assert trained.exit_code == 0, trained.output
    calls, real = [], sampling.sample_lines

    def counted(*args):
        calls.append(len(args[-1]))                    # lines in this kernel call
        return real(*args)

    monkeypatch.setattr(sampling, "sample_lines", counted)
    before = blas.thread_count()
    try:
        outputs, split = {}, {}
        for threads, n in (("1", 9), ("2", 9), ("2", 1)):
            calls.clear()
            result = CliRunner().invoke(cli, ["sample", "-m", str(model), "--n", str(n), "--seed", "3",
                                              "--threads", threads])
            assert result.exit_code == 0, result.output
            outputs[threads, n], split[threads, n] = result.stdout, sorted(calls)
            if (threads, n) == ("2", 1):
                assert blas_threads.kernel_threads() == 2               # one line: the kernels' BLAS takes the threads
            else:
                assert blas_threads.kernel_threads() == 1
    finally:
        blas.give_threads(before, to_kernels=False)
    assert split == {("1", 9): [9], ("2", 9): [4, 5], ("2", 1): [1]}
    assert len(outputs["2", 9].splitlines()) == 9
    ckpt = load(str(model))
    lines = {k: words(ckpt.vocab, outputs[k].splitlines()) for k in (("1", 9), ("2", 9))}
    uniforms = np.random.default_rng(3).random((9, 100))               # what `sample --seed 3` draws with
    assert_same_draws(ckpt.model, ckpt.vocab.eos, lines["2", 9], lines["1", 9], uniforms)
