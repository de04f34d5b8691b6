"""Training that survives interruption: Ctrl-C / SIGTERM save and say how to resume, kill -9
never costs the last checkpoint, a resumed run equals an uninterrupted one, and a run that
diverges goes back to its last good state instead of saving NaNs."""

import os
import random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rnngen import checkpoint
from rnngen.cli import main
from rnngen.errors import RnngenError
from rnngen.lanes import SERIAL
from rnngen.model import Model

WORDS = ("the a dog dogs cat cats bird birds sees see chases chase runs run sleeps sleep big small old young "
         "park river house garden near under behind that this these those .").split()


def write_corpus(path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n"
                            for _ in range(lines)))


def start(*args, cwd) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RNNGEN_MODEL"}
    return subprocess.Popen([sys.executable, "-m", "rnngen", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``path`` exists: the first periodic checkpoint, so training (and its signal
    handling) is under way."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)


def params(path) -> dict:
    ckpt = checkpoint.load(str(path))
    return {k: v for k, v in ckpt.resume.items() if k.startswith("param.")} | {"history": ckpt.history}


def assert_same_run(a: dict, b: dict) -> None:
    """Same current weights, same last history entry, same number of whole epochs."""
    for k in a:
        if k != "history":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert sum(not h["partial"] for h in a["history"]) == sum(not h["partial"] for h in b["history"])
    for key in ("epoch", "partial", "step", "train_ppl", "valid_ppl", "lr"):
        assert a["history"][-1][key] == pytest.approx(b["history"][-1][key], rel=1e-6), key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt")
    write_corpus(d / "corpus.txt", 1500)
    return d / "corpus.txt"


# Far more epochs than any test waits for: runs end by signal, kill or --max-steps.
TRAIN = ["--hidden", "16", "--epochs", "1000", "--seed", "7", "--valid-fraction", "0.05", "--dropout", "0.2"]


def uninterrupted(corpus, steps: int, options: tuple[str, ...] = ()) -> dict:
    out = corpus.parent / f"uninterrupted-{steps}-{abs(hash(options))}.npz"
    if not out.exists():
        main(["train", str(corpus), "-o", str(out), *TRAIN, *options, "--max-steps", str(steps), "-q"])
    return params(out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_prints_the_resume_command(corpus, tmp_path, sig, code):
    out = tmp_path / "model.npz"
    proc = start("train", corpus, "-o", out, *TRAIN, "--checkpoint-every", "0.2", "--max-time", "3600", cwd=tmp_path)
    wait_for(out, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    err = stderr.decode()
    assert proc.returncode == code, err
    assert stdout == b"" and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("rnngen: interrupted at epoch ") and f"saved {out}" in last, last
    command = shlex.split(last.split("Resume with: ", 1)[1])
    assert command[:3] == ["rnngen", "train", str(corpus)]
    assert command[-4:] == ["--resume", str(out), "-o", str(out)] and "--valid-fraction" in command
    left = next(int(word.split("=")[1]) for word in command if word.startswith("--max-time="))
    assert 3000 < left < 3600                                        # what is left of the budget
    steps = checkpoint.load(str(out)).train["progress"]["step"] + 15
    resumed = subprocess.run([sys.executable, "-m", "rnngen", *command[1:], "--max-steps", str(steps)],
                             capture_output=True, cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    chosen = next(line for line in err.splitlines() if line.startswith("rnngen: options: "))    # for --max-time
    assert_same_run(params(out), uninterrupted(corpus, steps, tuple(chosen.split()[2:])))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_second_signal_exits_at_once_and_leaves_files_whole(corpus, tmp_path):
    out = tmp_path / "model.npz"
    proc = start("train", corpus, "-o", out, *TRAIN, "--hidden", "64", "--checkpoint-every", "0.05", cwd=tmp_path)
    wait_for(out, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)                               # two signals at once would count as one
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in stderr, stderr
    assert checkpoint.load(str(out)).resume is not None
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_second_signal_during_the_save_keeps_the_previous_file(corpus, tmp_path, monkeypatch):
    """In-process and deterministic: Ctrl-C twice while a checkpoint is being written."""
    out = tmp_path / "model.npz"
    main(["train", str(corpus), "-o", str(out), "--hidden", "8", "--epochs", "1", "-q"])
    before = out.read_bytes()
    real_savez = np.savez

    def interrupted_savez(fh, **arrays):
        real_savez(fh, **arrays)                   # the temporary file is written...
        os.kill(os.getpid(), signal.SIGINT)        # ...then Ctrl-C: finish the chunk and save
        os.kill(os.getpid(), signal.SIGINT)        # and again: quit now
        time.sleep(5)

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(corpus), "-o", str(out), "--hidden", "8", "--epochs", "1", "-q"])
    assert exit_.value.code == 130
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# --- resume == uninterrupted ----------------------------------------------------------------

@pytest.mark.parametrize("dropout", ["0", "0.3"])
def test_resume_after_max_steps_equals_uninterrupted(tmp_path, dropout):
    write_corpus(tmp_path / "c.txt", 300, seed=1)
    opts = ["--hidden", "8", "--epochs", "2", "--seed", "3", "--dropout", dropout, "--bptt", "10", "-q"]
    main(["train", str(tmp_path / "c.txt"), "-o", str(tmp_path / "a.npz"), *opts])
    n_chunks = params(tmp_path / "a.npz")["history"][0]["step"]
    k = n_chunks + n_chunks // 2                   # stop in the middle of the second epoch
    main(["train", str(tmp_path / "c.txt"), "-o", str(tmp_path / "b.npz"), *opts, "--max-steps", str(k)])
    stopped = checkpoint.load(str(tmp_path / "b.npz"))
    assert stopped.train["progress"]["step"] == k and stopped.history[-1]["partial"]
    main(["train", str(tmp_path / "c.txt"), "--resume", str(tmp_path / "b.npz"), "-o", str(tmp_path / "b.npz"),
          "-q"])
    assert_same_run(params(tmp_path / "b.npz"), params(tmp_path / "a.npz"))


# --- kill -9 ------------------------------------------------------------------------------------

def kill_trials(corpus, folder, trials: int, seed: int = 0) -> dict:
    """Train with a checkpoint after nearly every (tiny) chunk, so that a kill -9 at a random
    moment often lands in the middle of a write; the checkpoint on disk must load each time."""
    rng = random.Random(seed)
    stats = {"trials": 0, "lost": 0, "mid_write": 0}
    for trial in range(trials):
        out = folder / f"kill{trial}.npz"
        proc = start("train", corpus, "-o", out, "--hidden", "128", "--epochs", "50", "--batch-size", "2",
                     "--bptt", "5", "--checkpoint-every", "0.001", "-q", cwd=folder)
        wait_for(out, proc)
        time.sleep(rng.uniform(0, 1.0))
        proc.kill()
        proc.communicate()
        stats["trials"] += 1
        stats["mid_write"] += any(p.name.startswith(f".{out.name}.") for p in folder.iterdir())
        try:
            assert checkpoint.load(str(out)).resume is not None
        except (RnngenError, AssertionError):
            stats["lost"] += 1
        for p in folder.iterdir():
            if p.name.startswith(f".{out.name}."):
                p.unlink()
    return stats


def test_kill_9_never_loses_the_checkpoint(corpus, tmp_path):
    stats = kill_trials(corpus, tmp_path, trials=3)
    assert stats["lost"] == 0, stats


@pytest.mark.slow
def test_kill_9_at_twenty_random_moments(corpus, tmp_path):
    stats = kill_trials(corpus, tmp_path, trials=20, seed=1)
    print(f"kill -9 trials: {stats}")
    assert stats["trials"] == 20 and stats["lost"] == 0, stats


def test_resume_after_kill_9_equals_uninterrupted(corpus, tmp_path):
    out = tmp_path / "model.npz"
    proc = start("train", corpus, "-o", out, *TRAIN, "--checkpoint-every", "0.1", cwd=tmp_path)
    wait_for(out, proc)
    time.sleep(0.3)
    proc.kill()
    proc.communicate()
    steps = checkpoint.load(str(out)).train["progress"]["step"] + 15
    main(["train", str(corpus), "--resume", str(out), "-o", str(out), "--valid-fraction", "0.05", "-q",
          "--max-steps", str(steps)])
    assert_same_run(params(out), uninterrupted(corpus, steps))


# --- divergence -------------------------------------------------------------------------------

def test_huge_learning_rate_gives_up_cleanly(tmp_path):
    write_corpus(tmp_path / "c.txt", 60, seed=2)
    out = tmp_path / "model.npz"
    r = subprocess.run([sys.executable, "-m", "rnngen", "train", str(tmp_path / "c.txt"), "-o", str(out),
                        "--hidden", "8", "--epochs", "2", "--optimizer", "sgd", "--lr", "1e6", "--clip", "0"],
                       capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"" and "Traceback" not in err and "Warning" not in err, err
    lines = err.splitlines()
    assert sum("training diverged" in line and "halved to" in line for line in lines) == 3, err
    assert lines[-1].startswith("rnngen: error: training diverged") and "--lr" in lines[-1]
    assert not out.exists() or np.all([np.isfinite(v).all() for v in checkpoint.load(str(out)).resume.values()])


def test_divergence_goes_back_to_the_last_good_state(tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path / "c.txt", 200, seed=4)
    real = Model.loss_and_grads
    calls = {"n": 0}

    def nan_once(self, *args, **kwargs):
        calls["n"] += 1
        nll, grads, state = real(self, *args, **kwargs)
        return (float("nan") if calls["n"] == 3 else nll), grads, state

    monkeypatch.setattr(Model, "loss_and_grads", nan_once)
    out = tmp_path / "model.npz"
    main(["train", str(tmp_path / "c.txt"), "-o", str(out), "--hidden", "8", "--epochs", "2", "--lr", "0.01"])
    err = capsys.readouterr().err
    assert "training diverged (loss nan" in err and "back to step 0 with the learning rate halved to 0.005" in err
    ckpt = checkpoint.load(str(out))
    assert ckpt.history[0]["lr"] == 0.005 and len(ckpt.history) == 2
    assert ckpt.train["progress"]["done"]


def test_weights_that_overflow_are_never_saved(tmp_path, monkeypatch, capsys):
    """An update that leaves finite loss and gradients but infinite weights, right before
    the end-of-epoch save: that save must not happen with them."""
    from rnngen import optim

    write_corpus(tmp_path / "c.txt", 200, seed=5)
    real_step = optim.Optimizer.step
    steps = {"n": 0}

    def overflow_once(self, params, grads, lr, scale=1.0, lanes=SERIAL):
        real_step(self, params, grads, lr, scale, lanes)
        steps["n"] += 1
        if steps["n"] == 1:
            params["out.b"][0] = np.inf

    monkeypatch.setattr(optim.Optimizer, "step", overflow_once)
    out = tmp_path / "model.npz"
    main(["train", str(tmp_path / "c.txt"), "-o", str(out), "--hidden", "8", "--epochs", "2", "--bptt", "200"])
    err = capsys.readouterr().err
    assert "weights not finite after step 1" in err, err
    ckpt = checkpoint.load(str(out))               # load() refuses non-finite arrays
    assert ckpt.history[-1]["epoch"] == 2
