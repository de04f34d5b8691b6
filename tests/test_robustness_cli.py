"""Bad input through the real command line: one line on stderr naming the problem, nothing
on stdout, a non-zero exit and never a traceback. Also the inputs that must work (CRLF, a
tiny corpus, unseen characters, empty stdin lines), pipelines into ``head`` and streaming
``score -``."""

import io
import os
import random
import shlex
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rnngen.checkpoint import Checkpoint, load, save
from rnngen.cli import main

WORDS = "the a dog dogs cat cats sees see runs run big small old park near under that this .".split()


def corpus_text(lines: int = 120, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(lines))


def rnngen(*args, stdin: bytes | None = None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RNNGEN_MODEL"}
    argv = [sys.executable, "-m", "rnngen", *(a if isinstance(a, bytes) else str(a) for a in args)]
    return subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, env=env, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert result.returncode == code, (result.returncode, err)
    assert result.stdout == b"", result.stdout[:200]
    lines = err.splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a corpus, a word model, a char model and broken inputs of every kind."""
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.txt").write_text(corpus_text())
    main(["train", str(d / "corpus.txt"), "-o", str(d / "word.npz"), "--hidden", "8", "--epochs", "1", "-q"])
    main(["train", str(d / "corpus.txt"), "-o", str(d / "char.npz"), "--unit", "char", "--hidden", "8",
          "--epochs", "1", "-q"])
    (d / "adir").mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"  \n\t\n\r\n")
    (d / "bin.txt").write_bytes(b"the dog\nru\x00ns\n" * 3)
    (d / "badutf8.txt").write_bytes(b"the dog\nthe \xff cat\n" * 3 + corpus_text(30).encode())
    (d / "latin1.txt").write_bytes("café naïve\n".encode("latin-1") * 3 + corpus_text(30).encode())
    (d / "model-text.npz").write_text("the dog runs\n")
    with zipfile.ZipFile(d / "model-zip.npz", "w") as zf:
        zf.writestr("readme.txt", "not a model")
    np.savez(d / "model-pickle.npz", meta=np.array([{"format": "rnngen-checkpoint"}], dtype=object))
    data = (d / "word.npz").read_bytes()
    (d / "model-truncated.npz").write_bytes(data[: len(data) // 2])
    ckpt = load(str(d / "word.npz"))
    save(str(d / "plain.npz"), Checkpoint(ckpt.model, ckpt.vocab))      # no training state
    return d


# (id, arguments ({d}: the work folder), stdin, exit code, words the one stderr line must hold)
BAD_INPUTS = [
    ("missing-file", "train {d}/nope.txt", None, 1, ["nope.txt", "no such file"]),
    ("directory", "train {d}/adir", None, 1, ["adir", "is a directory"]),
    ("empty-file", "train {d}/empty.txt", None, 1, ["empty.txt", "no text"]),
    ("whitespace-file", "train {d}/blank.txt", None, 1, ["blank.txt", "no text"]),
    ("binary-file", "train {d}/bin.txt", None, 1, ["bin.txt", "binary", "offset 10"]),
    ("invalid-utf8", "train {d}/badutf8.txt", None, 1, ["badutf8.txt", "UTF-8", "byte offset 12",
                                                         "--encoding-errors replace"]),
    ("latin-1", "train {d}/latin1.txt", None, 1, ["latin1.txt", "UTF-8", "byte offset 3"]),
    ("valid-missing", "train {d}/corpus.txt --valid {d}/nope.txt", None, 1, ["nope.txt", "no such file"]),
    ("hidden-0", "train {d}/corpus.txt --hidden 0", None, 2, ["--hidden", "0"]),
    ("vocab-size-negative", "train {d}/corpus.txt --vocab-size -1", None, 2, ["--vocab-size"]),
    ("bptt-0", "train {d}/corpus.txt --bptt 0", None, 2, ["--bptt"]),
    ("lr-negative", "train {d}/corpus.txt --lr -1", None, 2, ["--lr"]),
    ("lr-nan", "train {d}/corpus.txt --lr nan", None, 1, ["--lr"]),
    ("epochs-0", "train {d}/corpus.txt --epochs 0", None, 2, ["--epochs"]),
    ("dropout-1", "train {d}/corpus.txt --dropout 1", None, 2, ["--dropout"]),
    ("valid-fraction-1", "train {d}/corpus.txt --valid-fraction 1", None, 2, ["--valid-fraction"]),
    ("seed-negative", "train {d}/corpus.txt --seed -1", None, 2, ["--seed"]),
    ("checkpoint-every-negative", "train {d}/corpus.txt --checkpoint-every -5", None, 2, ["--checkpoint-every"]),
    ("output-folder-missing", "train {d}/corpus.txt -o {d}/missing/x.npz", None, 1, ["does not exist"]),
    ("output-is-directory", "train {d}/corpus.txt -o {d}/adir", None, 1, ["is a directory"]),
    ("resume-without-state", "train {d}/corpus.txt --resume {d}/plain.npz -o {d}/x.npz", None, 1,
     ["plain.npz", "no training state"]),
    ("n-negative", "sample -m {d}/word.npz --n -5", None, 2, ["--n"]),
    ("temperature-negative", "sample -m {d}/word.npz --temperature -0.5", None, 2, ["--temperature"]),
    ("top-k-0", "sample -m {d}/word.npz --top-k 0", None, 2, ["--top-k"]),
    ("top-k-above-vocabulary", "sample -m {d}/word.npz --top-k 1000", None, 2, ["--top-k", "vocabulary"]),
    ("top-p-0", "sample -m {d}/word.npz --top-p 0", None, 2, ["--top-p"]),
    ("top-p-above-1", "sample -m {d}/word.npz --top-p 1.5", None, 2, ["--top-p"]),
    ("max-length-0", "sample -m {d}/word.npz --max-length 0", None, 2, ["--max-length"]),
    ("prime-all-unknown", "sample -m {d}/word.npz --prime 'zebra quokka'", None, 1, ["--prime", "out of vocabulary"]),
    ("score-empty-argument", "score -m {d}/word.npz 'the dog' ''", None, 1, ["sentence 2 is empty"]),
    ("score-stdin-invalid-utf8", "score -m {d}/word.npz -", b"the dog\nthe \xe9 cat\n", 1,
     ["<stdin>", "byte offset 12"]),
    ("score-stdin-binary", "score -m {d}/word.npz -", b"the dog\x00\n", 1, ["<stdin>", "binary"]),
    ("score-stream-empty-file", "score -m {d}/word.npz --stream {d}/empty.txt", None, 1, ["empty.txt", "no text"]),
    ("model-missing", "info {d}/nope.npz", None, 1, ["nope.npz", "no such file"]),
    ("model-directory", "info {d}/adir", None, 1, ["adir", "is a directory"]),
    ("model-text-file", "info {d}/model-text.npz", None, 1, ["model-text.npz", "not an .npz"]),
    ("model-other-zip", "info {d}/model-zip.npz", None, 1, ["model-zip.npz", "readme.txt"]),
    ("model-pickle", "info {d}/model-pickle.npz", None, 1, ["model-pickle.npz", "dtype object"]),
    ("model-truncated", "info {d}/model-truncated.npz", None, 1, ["model-truncated.npz", "not an .npz"]),
    ("sample-model-pickle", "sample -m {d}/model-pickle.npz", None, 1, ["model-pickle.npz", "dtype object"]),
    ("score-model-text-file", "score -m {d}/model-text.npz 'the dog'", None, 1, ["model-text.npz", "not an .npz"]),
    ("unknown-command", "bogus", None, 2, ["No such command"]),
]


@pytest.fixture(scope="module")
def bad_results(work):
    """Every BAD_INPUTS case run as a real subprocess, several at a time."""
    def run(case):
        name, args, stdin, _, _ = case
        return name, rnngen(*shlex.split(args.format(d=shlex.quote(str(work)))), stdin=stdin, cwd=work)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, BAD_INPUTS))


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line(bad_results, case):
    name, _, _, code, words = case
    one_line_error(bad_results[name], *words, code=code)


def test_score_invalid_utf8_argument(work):
    one_line_error(rnngen("score", "-m", work / "word.npz", b"the \xff dog"), "sentence 1", "UTF-8", "offset 4")


# --- inputs that must work (in-process: the command line is the same code) ---------------

@pytest.mark.parametrize("name", ["badutf8", "latin1"])
def test_encoding_errors_replace_goes_on(work, name):
    out = work / f"{name}-replaced.npz"
    main(["train", str(work / f"{name}.txt"), "-o", str(out), "--encoding-errors", "replace", "--hidden", "8",
          "--epochs", "1", "-q"])
    assert any("\ufffd" in t for t in load(str(out)).vocab.tokens)


def test_crlf_is_lf(work):
    text = corpus_text(60, seed=3)
    (work / "lf.txt").write_bytes(text.encode())
    (work / "crlf.txt").write_bytes(text.replace("\n", "\r\n").encode())
    for name in ("lf", "crlf"):
        main(["train", str(work / f"{name}.txt"), "-o", str(work / f"{name}.npz"), "--hidden", "8", "--epochs", "1",
              "-q"])
    lf, crlf = load(str(work / "lf.npz")), load(str(work / "crlf.npz"))
    assert lf.vocab.tokens == crlf.vocab.tokens
    assert not any("\r" in t for t in crlf.vocab.tokens)
    assert lf.history[-1]["train_ppl"] == pytest.approx(crlf.history[-1]["train_ppl"])


def test_corpus_shorter_than_one_batch(work, capsys):
    (work / "tiny.txt").write_text("the dog runs\n")
    main(["train", str(work / "tiny.txt"), "-o", str(work / "tiny.npz"), "--hidden", "8", "--epochs", "2"])
    out, err = capsys.readouterr()
    assert out == ""
    assert "using batch size 3" in err                  # 4 tokens, 20 streams asked for
    assert "training without" in err                    # one line: nothing to hold out for validation
    assert len(load(str(work / "tiny.npz")).history) == 2


def test_sample_greedy_and_top_k_of_whole_vocabulary(work, capsys):
    n_tokens = len(load(str(work / "word.npz")).vocab)
    for args in (["--temperature", "0"], ["--top-k", str(n_tokens)]):
        main(["sample", "-m", str(work / "word.npz"), "--n", "2", "--seed", "1", *args])
        assert len(capsys.readouterr().out.splitlines()) == 2


def _score_stdin(work, monkeypatch, capsys, model: str, data: bytes) -> list[list[str]]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    main(["score", "-m", str(work / model), "-q", "-"])
    return [row.split("\t") for row in capsys.readouterr().out.splitlines()]


def test_score_empty_stdin_lines_keep_alignment(work, monkeypatch, capsys):
    rows = _score_stdin(work, monkeypatch, capsys, "word.npz", "\ufeffthe dog\n\n \r\nthe cat runs".encode())
    assert [(r[2], r[4]) for r in rows] == [("3", "the dog"), ("1", ""), ("1", " "), ("4", "the cat runs")]


def test_score_one_huge_line_from_stdin(work, monkeypatch, capsys):
    line = " ".join(["the dog runs"] * 100_000)      # 1.2 MB, read in 64 KB pieces
    rows = _score_stdin(work, monkeypatch, capsys, "word.npz", line.encode() + b"\n")
    assert len(rows) == 1 and rows[0][2] == str(300_001)


def test_score_char_model_unseen_characters(work, capsys):
    main(["score", "-m", str(work / "char.npz"), "-q", "the Ωx€ dog"])
    logprob, _, tokens, oov, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert (int(tokens), int(oov), text) == (12, 3, "the Ωx€ dog")
    assert np.isfinite(float(logprob))


def test_help_does_not_import_numpy():
    code = ("import sys\nfrom rnngen.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('numpy', 'numba') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("[]"), r.stdout + r.stderr


def test_no_command_shows_help():
    r = rnngen()
    assert r.returncode == 2 and r.stderr.startswith(b"Usage:") and b"Traceback" not in r.stderr


# --- pipelines -----------------------------------------------------------------------------

def _pipeline(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, cwd=cwd, timeout=120)


def test_sample_into_head_is_quiet(work):
    r = _pipeline(f"{sys.executable} -m rnngen sample -m word.npz --n 20000 --max-length 3 | head -1", work)
    assert r.returncode in (0, 141), r.stderr
    assert r.stderr == b"" and len(r.stdout.splitlines()) == 1


def test_score_into_head_is_quiet(work):
    (work / "big.txt").write_text(corpus_text(20000, seed=5))
    r = _pipeline(f"{sys.executable} -m rnngen score -m word.npz - < big.txt | head -1", work)
    assert r.returncode in (0, 141), r.stderr
    assert r.stderr == b"" and len(r.stdout.splitlines()) == 1


def test_score_stdin_answers_each_line_as_it_arrives(work):
    env = {k: v for k, v in os.environ.items() if k != "RNNGEN_MODEL"}
    proc = subprocess.Popen([sys.executable, "-m", "rnngen", "score", "-m", str(work / "word.npz"), "-q", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for sentence in ("the dog runs", "a cat sees the park", "", "dogs run"):
            proc.stdin.write(sentence.encode() + b"\n")
            proc.stdin.flush()
            line = _readline_before(proc.stdout, time.monotonic() + 30)
            assert line.rstrip(b"\n").split(b"\t")[-1] == sentence.encode()
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b"" and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _readline_before(stream, deadline: float) -> bytes:
    """One line from a pipe, failing (not hanging) if it does not come before the deadline."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        buf = b""
        while not buf.endswith(b"\n"):
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no result line in time (got {buf!r})")
            chunk = os.read(stream.fileno(), 1)
            assert chunk, f"stream closed (got {buf!r})"
            buf += chunk
    return buf


# --- a 50 MB line: works, in linear time ---------------------------------------------------

@pytest.mark.slow
def test_fifty_megabyte_single_line(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    times = {}
    for mb in (5, 50):
        line = " ".join(words[rng.integers(0, len(words), mb * 1_000_000 // 4)])[: mb * 1_000_000].rsplit(" ", 1)[0]
        path = tmp_path / f"line{mb}.txt"
        path.write_text(line)
        t0 = time.perf_counter()
        r = rnngen("train", path, "-o", tmp_path / f"m{mb}.npz", "--hidden", "8", "--max-steps", "50", "-q",
                   timeout=600)
        assert r.returncode == 0 and r.stdout == b"", r.stderr
        score = rnngen("score", "-m", tmp_path / f"m{mb}.npz", "-q", "-", stdin=path.read_bytes(), timeout=600)
        assert score.returncode == 0, score.stderr
        assert int(score.stdout.split(b"\t")[2]) == line.count(" ") + 2
        stream = rnngen("score", "-m", tmp_path / f"m{mb}.npz", "-q", "--stream", path, timeout=600)
        assert stream.returncode == 0 and int(stream.stdout.split(b"\t")[2]) == line.count(" ") + 2, stream.stderr
        times[mb] = time.perf_counter() - t0
    assert times[50] < 15 * times[5] + 10, times     # 10x the data: linear, with slack
