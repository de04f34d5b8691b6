"""Data-parallel training over MPI (rnngen.distributed): a job of 2 or 3 ranks trains the
same model as one process with the same global batch, resumes across rank counts, and
ends within seconds, with its last checkpoint intact, when a rank dies or fails. Without
an MPI launcher nothing of MPI is imported. The jobs run under the mpich wheel's mpiexec
(the mpi extra, which the dev extra installs) on localhost."""

import array
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rnngen import checkpoint, distributed
from rnngen.cli import main

CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "agreement"
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
if not os.access(MPIEXEC, os.X_OK):
    MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'rnngen[mpi]')")
# A tiny model: 40 Adam steps with dropout, on the first lines of the project corpus.
TRAIN = ["--hidden", "24", "--epochs", "2", "--max-steps", "40", "--bptt", "10", "--dropout", "0.3",
         "--seed", "5", "--threads", "1", "-q"]
JOB_SECONDS = 120                       # a job that is still running then has hung


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    lines = (CORPUS / "train.txt").read_text().splitlines(keepends=True)
    (folder / "train.txt").write_text("".join(lines[:400]))
    (folder / "valid.txt").write_text("".join(lines[400:460]))
    return folder


def rnngen_cmd(folder, out, *extra):
    return [sys.executable, "-m", "rnngen", "train", str(folder / "train.txt"), "--valid", str(folder / "valid.txt"),
            "-o", str(out), *TRAIN, *extra]


def run(cmd, ranks: int = 0, **kw) -> subprocess.CompletedProcess:
    """``cmd`` as it is, or as ``ranks`` MPI ranks; stdout and stderr captured."""
    full = [MPIEXEC, "-n", str(ranks), *cmd] if ranks else cmd
    return subprocess.run(full, capture_output=True, text=True, timeout=JOB_SECONDS, **kw)


def weights(path) -> dict:
    ckpt = checkpoint.load(str(path))
    return {k: v for k, v in ckpt.resume.items()} | {"history": ckpt.history}


def assert_same_training(a: dict, b: dict) -> None:
    """Weights, optimiser state and carried state within float32 rounding; same losses."""
    for k in a:
        if k != "history":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * np.abs(a[k]).max(), err_msg=k)
    ends = [[h for h in run["history"][:-1] if not h["partial"]] + run["history"][-1:] for run in (a, b)]
    assert len(ends[0]) == len(ends[1])
    for x, y in zip(*ends):         # the whole epochs and the last entry (a resumed run has a partial one more)
        for key in ("step", "train_ppl", "valid_ppl", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-4), key


@pytest.fixture(scope="module")
def one_process(corpus):
    out = corpus / "one.npz"
    r = run(rnngen_cmd(corpus, out))
    assert r.returncode == 0, r.stderr
    return weights(out)


# --- without MPI ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, size", [(20, 1), (20, 2), (20, 3), (7, 3), (3, 3)])
def test_ranks_share_the_streams_in_contiguous_slices(n, size):
    parts = []
    for rank in range(size):
        w = distributed.World()
        w.rank, w.size = rank, size
        parts.append(w.part(n))
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


@pytest.mark.parametrize("size", [1, 2, 3, 7, 40])
def test_stream_pieces_start_at_lines_and_cover_the_stream(size):
    ids = np.random.default_rng(size).integers(0, 6, 200)          # id 0 (<eos>) ends a line
    bounds = distributed.piece_bounds(ids, size)
    assert len(bounds) == size + 1 and bounds[0] == 0 and bounds[-1] == len(ids)
    assert bounds == sorted(bounds)
    assert all(ids[b - 1] == 0 for b in bounds[1:-1] if 0 < b < len(ids))


def test_the_launcher_is_recognised_by_its_variables():
    assert distributed.launched_size({}) == 1
    assert distributed.launched_size({"PMI_RANK": "1", "PMI_SIZE": "4"}) == 4
    assert distributed.launched_size({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}) == 2


def test_workers_is_taken_out_of_the_command_it_restarts():
    argv = ["train", "c.txt", "--workers", "2", "--hidden", "8", "--workers=3"]
    assert distributed.without_option(argv, "--workers") == ["train", "c.txt", "--hidden", "8"]


def test_an_abort_waits_for_the_launcher_to_read_the_error_line(tmp_path, monkeypatch):
    read_end, write_end = os.pipe()
    os.write(write_end, b"rnngen: error: x\n")
    reader = threading.Timer(0.2, os.read, (read_end, 100))
    reader.start()
    distributed._wait_until_read(write_end, limit=30)
    left = array.array("i", [1])
    fcntl.ioctl(read_end, termios.FIONREAD, left)
    assert left[0] == 0                                             # it returned after the read
    reader.join()
    os.write(write_end, b"left unread\n")
    t0 = time.monotonic()
    distributed._wait_until_read(write_end, limit=0.3)              # nobody reads: it gives up
    assert time.monotonic() - t0 >= 0.3
    os.close(read_end), os.close(write_end)

    def no_waiting(seconds):
        raise AssertionError("waited on a file")

    monkeypatch.setattr(distributed.time, "sleep", no_waiting)
    with open(tmp_path / "log", "w") as f:                         # a file is not waited on
        f.write("x")
        f.flush()
        distributed._wait_until_read(f.fileno(), limit=30)


def test_a_plain_run_imports_nothing_of_mpi(corpus, tmp_path):
    code = ("import sys; from rnngen.cli import main\n"
            f"try:\n    main({['train', str(corpus / 'train.txt'), '-o', str(tmp_path / 'm.npz'), *TRAIN]!r})\n"
            "finally:\n    assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr


def test_the_extra_absent_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    """Under a launcher without mpi4py, and --workers without it: one line saying what to install."""
    blocked = "import sys; sys.modules['mpi4py'] = None; from rnngen.cli import main; main()"
    env = {**os.environ, "PMI_RANK": "0", "PMI_SIZE": "2"}
    r = run([sys.executable, "-c", blocked, "train", str(corpus / "train.txt"), "-o", str(tmp_path / "m.npz")], env=env)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "rnngen: error: started by an MPI launcher, but mpi4py is not installed (pip install 'rnngen[mpi]')"]
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(corpus / "train.txt"), "--workers", "2"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "rnngen: error: --workers needs MPI: pip install 'rnngen[mpi]' (mpi4py and MPICH's mpiexec)"]


# --- jobs of several ranks -----------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_a_job_trains_what_one_process_does(corpus, one_process, ranks):
    """The same global batch of 20 streams (10 + 10, or 6 + 7 + 7): the same losses,
    validation perplexities, weights and optimiser state, dropout included."""
    out = corpus / f"ranks{ranks}.npz"
    r = run(rnngen_cmd(corpus, out), ranks)
    assert r.returncode == 0, r.stderr
    assert_same_training(one_process, weights(out))


@needs_mpi
@pytest.mark.parametrize("model", [["--cell", "lstm", "--layers", "2", "--tie-weights", "--softmax", "class"],
                                   ["--cell", "gru", "--optimizer", "adagrad", "--threads", "2"],
                                   ["--softmax", "hs", "--optimizer", "adagrad"]])
def test_other_models_and_optimisers_train_alike_in_a_job(corpus, tmp_path, model):
    """Tied weights (a dense embedding gradient), the class softmax, Adagrad's row-sparse
    update, two lanes in each rank, and the hierarchical softmax."""
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    r = run(rnngen_cmd(corpus, one, *model))
    assert r.returncode == 0, r.stderr
    r = run(rnngen_cmd(corpus, two, *model), 2)
    assert r.returncode == 0, r.stderr
    assert_same_training(weights(one), weights(two))


@needs_mpi
def test_workers_starts_the_job_and_a_resume_may_change_the_rank_count(corpus, one_process):
    """20 steps on 2 ranks (--workers 2), the rest on 3: the run one process makes."""
    out = corpus / "resumed.npz"
    r = run(rnngen_cmd(corpus, out, "--max-steps", "20", "--workers", "2"))
    assert r.returncode == 0, r.stderr
    assert weights(out)["history"][-1]["step"] == 20
    r = run(rnngen_cmd(corpus, out, "--resume", str(out)), 3)
    assert r.returncode == 0, r.stderr
    assert_same_training(one_process, weights(out))


@needs_mpi
def test_a_jobs_metrics_log_is_written_once(corpus, tmp_path):
    """Rank 0 alone writes --log-file: each record once, tokens never decreasing."""
    from rnngen.metrics import read_log

    log = tmp_path / "job.jsonl"
    r = run(rnngen_cmd(corpus, tmp_path / "m.npz", "--log-file", str(log), "--log-every", "0"), 2)
    assert r.returncode == 0, r.stderr
    records = read_log(str(log))
    assert [e for rec in records for e in rec["events"] if e in ("start", "stop")] == ["start", "stop"]
    whole = [h for h in weights(tmp_path / "m.npz")["history"] if not h["partial"]]
    assert sum("epoch_end" in rec["events"] for rec in records) == len(whole) >= 1
    tokens = [rec["tokens"] for rec in records]
    assert tokens == sorted(tokens)


@needs_mpi
def test_a_bidirectional_model_is_refused_by_a_job_in_one_line(corpus, tmp_path):
    r = run(rnngen_cmd(corpus, tmp_path / "bi.npz", "--bidirectional"), 2)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "a bidirectional model trains in one process" in r.stderr


@needs_mpi
def test_commands_with_nothing_to_share_run_once_in_a_job(corpus, one_process):
    """sample and info under mpiexec: rank 0 runs them, the other ranks print nothing."""
    model = str(corpus / "one.npz")
    sampled = run([sys.executable, "-m", "rnngen", "sample", "-m", model, "--n", "3", "--seed", "1"], 2)
    alone = run([sys.executable, "-m", "rnngen", "sample", "-m", model, "--n", "3", "--seed", "1"])
    assert sampled.returncode == 0 and sampled.stdout == alone.stdout and len(sampled.stdout.splitlines()) == 3
    info = run([sys.executable, "-m", "rnngen", "info", model], 2)
    assert info.returncode == 0 and info.stdout.count("blas ") == 1


@needs_mpi
def test_ranks_that_read_different_data_stop_with_one_line(corpus, tmp_path):
    (tmp_path / "other.txt").write_text("".join((corpus / "train.txt").read_text().splitlines(True)[:300]))
    first = rnngen_cmd(corpus, tmp_path / "m.npz")
    other = [str(tmp_path / "other.txt") if a == str(corpus / "train.txt") else a for a in first]
    r = subprocess.run([MPIEXEC, "-n", "1", *first, ":", "-n", "1", *other], capture_output=True, text=True,
                       timeout=JOB_SECONDS)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["rnngen (rank 1): error: this rank read other training data than "
                                             "rank 0 (the ranks must see the same corpus and vocabulary options)"]


FAILING_RANK = """
import sys
from rnngen import model
calls = [0]
real = model.Model.loss_and_grads
def failing(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 15:
        raise ValueError("injected failure")
    return real(self, *args, **kwargs)
model.Model.loss_and_grads = failing
from rnngen.cli import main
main(sys.argv[1:])
"""


@needs_mpi
def test_an_exception_on_one_rank_ends_the_job_with_one_line(corpus, tmp_path):
    out = tmp_path / "m.npz"
    cmd = rnngen_cmd(corpus, out, "--checkpoint-every", "0.001", "--max-steps", "1000", "--epochs", "50")
    failing = [sys.executable, "-c", FAILING_RANK, *cmd[3:]]
    t0 = time.monotonic()
    r = subprocess.run([MPIEXEC, "-n", "1", *cmd, ":", "-n", "1", *failing], capture_output=True, text=True,
                       timeout=JOB_SECONDS)
    assert time.monotonic() - t0 < 30
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["rnngen (rank 1): error: ValueError: injected failure"]
    assert_resumable(out, corpus)


def assert_resumable(out, corpus):
    """The checkpoint loads and a run resumes from it (in one process)."""
    before = checkpoint.load(str(out)).train["progress"]["step"]
    assert before > 0
    r = run(rnngen_cmd(corpus, out, "--resume", str(out), "--max-steps", str(before + 2), "--epochs", "1000"))
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(str(out)).train["progress"]["step"] == before + 2


def start_job(cmd, ranks: int) -> subprocess.Popen:
    """A job in a session of its own, as a terminal starts a command in its own process group."""
    return subprocess.Popen([MPIEXEC, "-n", str(ranks), *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_checkpoint(out, proc):
    deadline = time.monotonic() + JOB_SECONDS
    while not out.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.02)


def rank_pid(job: subprocess.Popen, rank: int) -> int:
    """The process id of a rank of the job: a descendant of its mpiexec with that PMI_RANK."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
    for pid in parents:
        ancestor = pid
        while ancestor in parents and ancestor != job.pid:
            ancestor = parents[ancestor]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if ancestor == job.pid else []
            if f"PMI_RANK={rank}".encode() in environ:
                return pid
        except OSError:
            continue
    raise AssertionError(f"rank {rank} not found")


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the rank's process in /proc")
def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes(corpus, tmp_path):
    out = tmp_path / "m.npz"
    job = start_job(rnngen_cmd(corpus, out, *LONG_RUN), 2)
    kill_rank_1_after_a_save(job, out)                  # ends within 10 s of the kill
    assert job.returncode != 0
    assert_resumable(out, corpus)


# A run that goes on until it is stopped, saving all the time.
LONG_RUN = ("--checkpoint-every", "0.05", "--max-steps", "100000", "--epochs", "1000")


def kill_rank_1_after_a_save(job: subprocess.Popen, out) -> tuple[str, str]:
    """kill -9 rank 1 of ``job`` once it has saved ``out``; what the job printed. The job
    must end within 10 s of the kill."""
    try:
        wait_for_checkpoint(out, job)
        time.sleep(0.3)
        os.kill(rank_pid(job, 1), signal.SIGKILL)
        t0 = time.monotonic()
        printed = job.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
        return printed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the rank's process in /proc")
def test_a_killed_rank_under_workers_is_one_line(corpus, tmp_path):
    """--workers watches its job: MPICH's banner about a rank that died without a word
    becomes one line naming the checkpoint to resume from."""
    out = tmp_path / "m.npz"
    job = subprocess.Popen([*rnngen_cmd(corpus, out, *LONG_RUN), "--workers", "2"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = kill_rank_1_after_a_save(job, out)
    assert job.returncode != 0 and stdout == ""
    assert "BAD TERMINATION" not in stderr and "=====" not in stderr, stderr
    assert stderr.splitlines()[-1] == (f"rnngen: error: a rank of the job ended without a word (exit code 9); the "
                                       f"job stopped; its last checkpoint {out} is whole: go on with --resume {out}")
    assert_resumable(out, corpus)


@needs_mpi
def test_ctrl_c_saves_on_every_rank_and_prints_the_resume_command(corpus, tmp_path):
    """A terminal's Ctrl-C reaches mpiexec and every rank: the job stops at one step, rank 0
    saves and prints the command that resumes, once."""
    out = tmp_path / "m.npz"
    job = start_job(rnngen_cmd(corpus, out, *LONG_RUN), 2)
    try:
        wait_for_checkpoint(out, job)
        time.sleep(0.3)
        os.killpg(job.pid, signal.SIGINT)
        _, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, err
    resume = [line for line in err.splitlines() if "Resume with:" in line]
    assert len(resume) == 1 and resume[0].split("Resume with: ")[1].startswith("mpiexec -n 2 rnngen train "), err
    assert_resumable(out, corpus)


def score_rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


@needs_mpi
def test_scoring_splits_lines_and_streams_over_the_ranks(corpus, one_process):
    """--lines: the same rows in the same order (to float32 sums); --stream: the same total
    but for the state reset that the warm-up makes small."""
    model = ["-m", str(corpus / "one.npz")]
    score = [sys.executable, "-m", "rnngen", "score", *model]
    lines = run([*score, "--lines", str(corpus / "valid.txt")])
    split = run([*score, "--lines", str(corpus / "valid.txt")], 3)
    assert lines.returncode == split.returncode == 0, split.stderr
    assert len(score_rows(split.stdout)) == 60 and split.stderr == lines.stderr
    for a, b in zip(score_rows(lines.stdout), score_rows(split.stdout)):
        assert b[2:] == a[2:] and float(b[0]) == pytest.approx(float(a[0]), abs=1e-3)
    stream = run([*score, "--stream", str(corpus / "valid.txt")])
    split = run([*score, "--stream", str(corpus / "valid.txt")], 2)
    assert stream.returncode == split.returncode == 0, split.stderr
    (a,), (b,) = score_rows(stream.stdout), score_rows(split.stdout)
    assert b[2:] == a[2:] and float(b[0]) == pytest.approx(float(a[0]), abs=1e-2)


def test_a_row_sparse_gradient_other_than_the_embeddings_is_reduced_dense():
    """The hierarchical softmax's hs.W gradient is a RowGrad over its targets' tree nodes,
    rows that the chunk's inputs do not name: reduce_step sums it dense."""
    from rnngen.distributed import CONTROLS, reduce_step
    from rnngen.rowgrad import RowGrad

    class Twice:                                                   # two ranks holding the same values
        size = 2

        def allreduce(self, buffer):
            buffer *= 2

    inputs = np.array([[1, 3]])
    embed = RowGrad(np.array([1, 3]), np.ones((2, 2), dtype=np.float32), (5, 2))
    nodes = RowGrad(np.array([0, 4]), np.full((2, 3), 0.5, dtype=np.float32), (6, 3))
    nll, out, _ = reduce_step(Twice(), 1.5, {"embed": embed, "hs.W": nodes}, inputs, np.zeros(CONTROLS))
    assert nll == 3.0 and isinstance(out["embed"], RowGrad)
    np.testing.assert_array_equal(np.asarray(out["embed"]), 2 * np.asarray(embed))
    np.testing.assert_array_equal(np.asarray(out["hs.W"]), 2 * np.asarray(nodes))
