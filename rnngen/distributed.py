"""Data-parallel training and scoring over MPI: the ranks of one job, and what they share.

:func:`world` is this process's place in the job. A plain run is a :class:`World` of one,
which needs no MPI at all; a process started by an MPI launcher (``mpiexec -n N rnngen ...``,
or ``rnngen train --workers N``) is an :class:`MPIWorld`, and only then is mpi4py imported.
The launcher is recognised by the variables it sets in each process's environment.

Training is synchronous: the batch's B streams go to the ranks in contiguous slices
(:meth:`World.part`); each rank computes the gradients of its streams' loss, divided by the
*global* batch size, so that their sum over the ranks is the one-process gradient; one
all-reduce (sum) per step adds them up (:func:`reduce_step`), and every rank then makes
the same update. The embedding's gradient stays row-sparse: every rank reads the whole
chunk, so each knows the rows the global batch touches and reduces just those.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import TYPE_CHECKING

from .errors import RnngenError

if TYPE_CHECKING:
    import numpy as np

# NumPy and the modules that load Numba are imported in the functions that use them: the CLI
# imports this module at start-up, which `rnngen --help` keeps short.

# Environment variables by which MPI launchers tell a process its rank and the job's size:
# MPICH's Hydra (and Intel MPI), Open MPI, and Slurm's PMI2/PMIx.
LAUNCHER_VARIABLES = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                      ("PMIX_RANK", "PMI_SIZE"))
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
# Control values that ride along at the end of each step's all-reduce.
SIGNAL, SAVE_DUE, SECONDS, DEADLINE = range(4)
CONTROLS = 4
# Seconds a rank other than 0 waits before it reports its error and aborts the job: when
# every rank fails the same way (a bad option, a missing file), rank 0 says it alone.
ABORT_GRACE = 1.0
# Seconds an aborting rank waits at most for the launcher to read its error line.
ABORT_DRAIN = 2.0
# Exit codes after a signal (128 + SIGINT, SIGTERM): every rank saved and stopped together.
INTERRUPTED = (130, 143)


def launched_size(environ=os.environ) -> int:
    """The number of ranks the MPI launcher started, from its variables; 1 outside one."""
    for rank, size in LAUNCHER_VARIABLES:
        if rank in environ and size in environ:
            return int(environ[size])
    return 1


def launched_rank(environ=os.environ) -> int:
    """This process's rank from the MPI launcher's variables; 0 outside one."""
    for rank, size in LAUNCHER_VARIABLES:
        if rank in environ and size in environ:
            return int(environ[rank])
    return 0


class World:
    """The job as one process sees it. This class is the job of a single process."""

    rank = 0
    size = 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` streams: sizes differ by at most one."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def allreduce(self, buffer: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``buffer`` over the ranks (in place)."""
        return buffer

    def bcast(self, value):
        """Rank 0's ``value``, on every rank."""
        return value

    def gather(self, array: np.ndarray, axis: int) -> np.ndarray | None:
        """The ranks' arrays joined along ``axis`` in rank order, on rank 0 (None elsewhere)."""
        return array

    def gather_lists(self, items: list) -> list:
        """The ranks' lists joined in rank order, on rank 0 (empty elsewhere)."""
        return items

    def agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on every rank."""
        return flag

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank."""
        return not self.agree(not flag)

    def on_root(self, fn, *args):
        """``fn(*args)`` run on rank 0 alone; its result on every rank."""
        return self.bcast(fn(*args) if self.root else None)

    def threads(self) -> int:
        """Threads a rank uses by default: the cores shared out among this machine's ranks."""
        return os.cpu_count() or 1


SINGLE = World()


class MPIWorld(World):
    """A rank of a job started by an MPI launcher (mpi4py's COMM_WORLD)."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise RnngenError("started by an MPI launcher, but mpi4py is not installed "
                              "(pip install 'rnngen[mpi]')") from None
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce(self, buffer: np.ndarray) -> np.ndarray:
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def bcast(self, value):
        return self.comm.bcast(value, root=0)

    def gather(self, array: np.ndarray, axis: int) -> np.ndarray | None:
        import numpy as np

        parts = self.comm.gather(np.ascontiguousarray(array), root=0)
        return np.concatenate(parts, axis=axis) if self.root else None

    def gather_lists(self, items: list) -> list:
        parts = self.comm.gather(items, root=0)
        return [item for part in parts for item in part] if self.root else []

    def agree(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MIN))

    def threads(self) -> int:
        local = next((int(os.environ[v]) for v in LOCAL_SIZE_VARIABLES if v in os.environ), self.size)
        return max(1, (os.cpu_count() or 1) // max(1, local))

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


@functools.cache
def world() -> World:
    """This process's world: MPI's when an MPI launcher started more than one rank."""
    return MPIWorld() if launched_size() > 1 else SINGLE


def run_rank(main, argv=None) -> None:
    """Run the CLI's ``main`` as one rank of a job: an error ends the whole job (MPI_Abort)
    after one line on stderr, so that no rank waits forever for one that has given up. A
    rank killed outright is the launcher's to notice: it then ends the others. A clean exit,
    or one after a signal (which every rank takes at the same step), ends this rank alone."""
    try:
        w = world()
    except RnngenError as exc:                  # no mpi4py: no job to end
        print(f"rnngen: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0 or code in INTERRUPTED or not isinstance(w, MPIWorld):
            raise
        _abort(w, code)
    except BaseException as exc:                # an error the CLI does not turn into one line
        if not isinstance(w, MPIWorld):
            raise
        if isinstance(exc, w.MPI.Exception):    # a rank that died or aborted broke a collective
            message = "another rank of the job stopped (killed, or out of memory?); ending the job"
        else:
            message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        print(f"rnngen{before_error()}: error: {message}", file=sys.stderr, flush=True)
        _abort(w, 1)


def _abort(w: MPIWorld, code: int) -> None:
    """MPI_Abort, with stderr closed first: the error has been said, and MPICH's own line
    about the abort would only repeat it."""
    sys.stderr.flush()
    _wait_until_read(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    w.abort(code)


def _wait_until_read(fd: int, limit: float = ABORT_DRAIN) -> None:
    """Wait (at most ``limit`` seconds) until the launcher has read what is left in the pipe
    on ``fd``: the abort's teardown can drop an error line still in the pipe."""
    try:
        import array
        import fcntl  # Unix only, as are the pipes asked about
        import stat
        import termios
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        left = array.array("i", [0])
        end = time.monotonic() + limit
        while time.monotonic() < end:
            fcntl.ioctl(fd, termios.FIONREAD, left)
            if left[0] == 0:
                return
            time.sleep(0.01)
    except (ImportError, OSError):              # no pipe to ask about: abort as it is
        return


@functools.cache
def before_error() -> str:
    """Called before a rank reports an error; returns what names the rank in the message
    (nothing in a single process, nor on rank 0). A rank other than 0 waits ABORT_GRACE
    seconds first, so that an error that every rank meets is said once, by rank 0, whose
    abort ends the others before they say it."""
    if launched_size() == 1 or world().root:
        return ""
    time.sleep(ABORT_GRACE)
    return f" (rank {world().rank})"


# --- one training step's all-reduce -------------------------------------------------------

def reduce_step(w: World, nll: float, grads: dict, inputs: np.ndarray, controls: np.ndarray) -> tuple:
    """Add up the ranks' summed NLL, gradients and ``controls`` in one all-reduce.

    ``inputs`` is the whole chunk (T, B), the same on every rank: the embedding's row-sparse
    gradient is reduced over the rows the global batch touches, which each rank finds
    without asking the others, and comes back as a RowGrad over those rows. Other row-sparse
    gradients (the hierarchical softmax's, over its targets' tree nodes) are reduced dense.
    Returns (nll, gradients, controls), each the same on every rank."""
    import numpy as np

    from .rowgrad import RowGrad

    if w.size == 1:
        return nll, grads, controls
    names = list(grads)
    rows = {k: np.unique(inputs) for k in names if k == "embed" and isinstance(grads[k], RowGrad)}
    sizes = [rows[k].size * grads[k].shape[1] if k in rows else math.prod(grads[k].shape) for k in names]
    dtype = next(iter(grads.values())).dtype
    buffer = np.zeros(sum(sizes) + 1 + CONTROLS, dtype=np.float64 if dtype == np.float64 else np.float32)
    views, start = {}, 0
    for k, n in zip(names, sizes):
        views[k] = buffer[start:start + n]
        start += n
        g = grads[k]
        if k in rows:
            dense = views[k].reshape(rows[k].size, g.shape[1])
            dense[np.searchsorted(rows[k], g.rows)] = g.values
        else:
            views[k].reshape(g.shape)[...] = np.asarray(g)
    buffer[start] = nll
    buffer[start + 1:] = controls
    w.allreduce(buffer)
    out = {k: RowGrad(rows[k], views[k].reshape(rows[k].size, grads[k].shape[1]), grads[k].shape) if k in rows
           else views[k].reshape(grads[k].shape) for k in names}
    return float(buffer[start]), out, buffer[start + 1:].astype(np.float64)


# --- starting a job on this machine --------------------------------------------------------

def mpiexec_path() -> str:
    """The MPI launcher: the one beside this Python (the mpich wheel's, in a venv), else on PATH."""
    import importlib.util
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    launcher = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if launcher is None or importlib.util.find_spec("mpi4py") is None:
        raise RnngenError("--workers needs MPI: pip install 'rnngen[mpi]' (mpi4py and MPICH's mpiexec)")
    return launcher


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--name N`` or ``--name=N``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def launch_workers(workers: int, argv: list[str]) -> None:
    """Run ``mpiexec -n workers`` with the same command without --workers: the job that
    ``mpiexec -n workers rnngen ...`` starts, and exit with its status. One worker is this
    process itself, with no MPI at all."""
    if workers == 1:
        return
    launcher = mpiexec_path()
    sys.stderr.flush()
    sys.exit(supervise([launcher, "-n", str(workers), sys.executable, "-m", "rnngen",
                        *without_option(argv, "--workers")], _output(argv)))


def supervise(cmd: list[str], output: str = "model.npz") -> int:
    """Run the job ``cmd`` (``rnngen train``: nothing on stdout) with what it prints passed on
    to stderr, except that MPICH's banner about a rank that ended without a word (killed, or
    crashed) becomes one line. Ctrl-C reaches the job through the terminal and SIGTERM is
    passed on to it; this process waits for it to save and say how to resume. Returns the
    job's exit status."""
    import signal
    import subprocess

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        signal.signal(signal.SIGTERM, lambda signum, frame: job.send_signal(signum))     # kill PID: the job's too
        banner = []
        for line in job.stdout:
            if _in_banner(line, banner):
                banner.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        status = job.wait()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    if banner:
        sys.stderr.write(f"rnngen: error: a rank of the job ended without a word ({_banner_cause(banner)}); "
                         f"the job stopped; its last checkpoint {output} is whole: go on with --resume {output}\n")
    return status if status else (1 if banner else 0)


def _output(argv: list[str]) -> str:
    """The checkpoint a ``rnngen train`` command line writes (-o/--output, else model.npz)."""
    for i, arg in enumerate(argv):
        if arg in ("-o", "--output") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output="):
            return arg.partition("=")[2]
    return "model.npz"


def _in_banner(line: str, banner: list) -> bool:
    """Is ``line`` part of MPICH's report of a bad termination (its '=' frame and the lines after)?"""
    text = line.strip()
    return text.startswith("=") or (bool(banner) and (not text or text.startswith(("YOUR APPLICATION", "This typically",
                                                                                       "Please see"))))


def _banner_cause(banner: list) -> str:
    for line in banner:
        text = line.strip(" =\n")
        if text.startswith("YOUR APPLICATION TERMINATED WITH THE EXIT STRING:"):
            return text.split(":", 1)[1].strip()
        if text.startswith("EXIT CODE:"):
            return "exit code " + text.split(":", 1)[1].strip()
    return "see the launcher's log"


# --- scoring a stream in pieces ------------------------------------------------------------

# Tokens before a piece that a rank runs the model over, unscored, so that the piece starts
# from a state that has read the text just before it rather than from zeros.
WARMUP = 1000


def piece_bounds(ids, size: int, eos: int = 0) -> list[int]:
    """Where ``size`` near-equal pieces of an id stream start (and the last ends): each after
    an end-of-line token, so that every piece begins at a line, as the stream itself does."""
    bounds = [0]
    for k in range(1, size):
        bounds.append(_line_start(ids, max(len(ids) * k // size, bounds[-1]), eos))
    return bounds + [len(ids)]


def _line_start(ids, at: int, eos: int, window: int = 1 << 16) -> int:
    """The first position from ``at`` on that starts a line (follows ``eos``), else the
    stream's end; read a window at a time, since the stream may be memory-mapped."""
    import numpy as np

    if at == 0:
        return 0
    while at < len(ids):
        ends = np.flatnonzero(np.asarray(ids[at - 1:at - 1 + window]) == eos)
        if ends.size:
            return at + int(ends[0])
        at += window
    return len(ids)


def stream_logprob_part(w: World, model, ids, warmup: int = WARMUP) -> tuple[float, int]:
    """Total log-probability and token count of an id stream, as :func:`rnngen.score.stream_logprob`
    gives them, with the stream split over the ranks at line boundaries: each rank scores its
    piece, the pieces after the first from the state that ``warmup`` tokens before them
    leave. The sum differs from one process's only by that state reset."""
    import numpy as np

    from .score import chunked_logprobs

    bounds = piece_bounds(ids, w.size)
    start, stop = bounds[w.rank], bounds[w.rank + 1]
    state = None
    if start > 0 and warmup > 0:
        before = np.asarray(ids[max(0, start - warmup):start], dtype=np.int32)
        _, _, state = model.hidden_forward(_inputs(before), model.zero_state(1))     # the layers only
    piece = np.asarray(ids[start:stop], dtype=np.int32)
    n = model.history                                     # inputs before the piece's first (<eos>), for n-gram features
    before = np.asarray(ids[max(0, start - 1 - n):max(0, start - 1)], dtype=np.int32)[:, None] if n else None
    logprob = float(chunked_logprobs(model, _inputs(piece), piece[:, None], state, before=before)[0].sum()) \
        if piece.size else 0.0
    total = w.allreduce(np.array([logprob, piece.size], dtype=np.float64))
    return float(total[0]), int(total[1])


def _inputs(ids):
    """The inputs that predict ``ids``: <eos> (id 0), then every id but the last."""
    import numpy as np

    return np.concatenate(([0], ids[:-1])).astype(np.int32)[:, None]


def score_lines_part(w: World, model, vocab, lines: list[str], per_token: bool = False) -> list:
    """:func:`rnngen.score.score_lines` with the lines split over the ranks in contiguous
    shares: each line is scored on its own, so the results are one process's (to the float32
    sums of a batch). All of them, in input order, on rank 0; none elsewhere."""
    from .score import score_lines

    return w.gather_lists(score_lines(model, vocab, lines[w.part(len(lines))], per_token))
