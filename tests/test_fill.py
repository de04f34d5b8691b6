"""Filling a blank: exact with a forward model, direct with a cloze model; the fill command."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CORPUS

from rnngen.cli import cli
from rnngen.cloze import ClozeModel
from rnngen.config import ModelConfig, TrainConfig
from rnngen.errors import RnngenError
from rnngen.fill import fill_lines, pseudo_log_likelihood, split_blank
from rnngen.model import Model
from rnngen.score import score_lines
from rnngen.vocab import Vocab

WORDS = "the cat dog sat sits on mat a rug ."
VOCAB = Vocab.build([WORDS])


def models(cell="lstm", dtype=np.float32, **kw):
    forward = Model.init(ModelConfig(vocab_size=len(VOCAB), cell=cell, hidden=6, **kw), seed=1, dtype=dtype)
    cloze = ClozeModel.init(ModelConfig(vocab_size=len(VOCAB), cell=cell, hidden=6, direction="bidirectional", **kw),
                            seed=1, dtype=dtype)
    rng = np.random.default_rng(0)
    for m in (forward, cloze):
        for v in m.params.values():
            v += rng.normal(0, 0.5, v.shape).astype(dtype)
    return forward, cloze


@pytest.mark.parametrize("line", ["the cat ___ on the mat .", "___ cat sat", "the dog sat on ___"])
@pytest.mark.parametrize("softmax", ["full", "class"])
def test_exact_fill_equals_brute_force_scoring(line, softmax):
    kw = {"softmax": "class", "class_bounds": [0, 3, 7, len(VOCAB)]} if softmax == "class" else {}
    forward, _ = models(dtype=np.float64, **kw)
    V = len(VOCAB)
    [result] = fill_lines(forward, VOCAB, [line], top_k=V)
    tokens = [t for t in VOCAB.tokens if t not in ("<eos>", "<unk>")]
    brute = np.array([r.logprob for r in score_lines(forward, VOCAB, [line.replace("___", t) for t in tokens])])
    brute = np.exp(brute - np.logaddexp.reduce(brute))
    got = {c.token: c.prob for c in result.candidates}
    assert set(got) == set(tokens)
    np.testing.assert_allclose([got[t] for t in tokens], brute, rtol=1e-9)
    assert [c.prob for c in result.candidates] == sorted(got.values(), reverse=True)
    assert result.candidates[0].logprob == pytest.approx(np.log(result.candidates[0].prob))


@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("allow_unk", [False, True])
def test_probabilities_sum_to_one_over_the_vocabulary(kind, allow_unk):
    model = models()[kind]
    V = len(VOCAB)
    [r] = fill_lines(model, VOCAB, ["the cat ___ on the mat ."], top_k=V, allow_unk=allow_unk)
    tokens = [c.token for c in r.candidates]
    assert "<eos>" not in tokens and ("<unk>" in tokens) == allow_unk
    assert len(tokens) == V - 2 + allow_unk
    assert sum(c.prob for c in r.candidates) == pytest.approx(1.0, abs=1e-9)


def test_cloze_fill_is_the_cloze_output_renormalised():
    _, cloze = models(cell="gru", layers=2)
    line = "the cat ___ on the mat ."
    [r] = fill_lines(cloze, VOCAB, [line], top_k=len(VOCAB))
    ids = np.array([VOCAB.index[t] for t in line.replace("___", "sat").split()], dtype=np.int32)
    logp = cloze.next_logprobs(cloze.line_tops(ids[:, None])[2])[0]
    allowed = np.arange(2, len(VOCAB))
    want = np.exp(logp[allowed] - np.logaddexp.reduce(logp[allowed]))
    got = {c.token: c.prob for c in r.candidates}
    np.testing.assert_allclose([got[VOCAB.tokens[i]] for i in allowed], want, rtol=1e-5)


def test_lines_of_several_lengths_fill_as_each_alone():
    _, cloze = models()
    lines = ["the cat ___ .", "___ dog sat on a rug .", "a ___ sits", "the cat ___ ."]
    together = fill_lines(cloze, VOCAB, lines, top_k=3)
    for line, r in zip(lines, together):
        [alone] = fill_lines(cloze, VOCAB, [line], top_k=3)
        assert [c.token for c in r.candidates] == [c.token for c in alone.candidates]
        np.testing.assert_allclose([c.prob for c in r.candidates], [c.prob for c in alone.candidates], rtol=1e-5)


def test_candidates_are_normalised_among_themselves():
    forward, cloze = models()
    for model in (forward, cloze):
        [full] = fill_lines(model, VOCAB, ["the cat ___ on the mat ."], top_k=len(VOCAB))
        [some] = fill_lines(model, VOCAB, ["the cat ___ on the mat ."], candidates=["sits", "sat", "rug"])
        p = {c.token: c.prob for c in full.candidates}
        total = p["sits"] + p["sat"] + p["rug"]
        assert {c.token: c.prob for c in some.candidates} == pytest.approx({t: p[t] / total for t in p
                                                                            if t in ("sits", "sat", "rug")})


def test_rescore_reranks_exactly_with_the_forward_model():
    forward, cloze = models()
    line = "the ___ sat on the mat ."
    [r] = fill_lines(cloze, VOCAB, [line], top_k=4, rescore=forward)
    [exact] = fill_lines(forward, VOCAB, [line], top_k=len(VOCAB))
    pool = {c.token: c.prob for c in exact.candidates}          # the pool is the whole (small) vocabulary
    assert [c.token for c in r.candidates] == [c.token for c in exact.candidates[:4]]
    assert [c.prob for c in r.candidates] == pytest.approx([pool[c.token] for c in r.candidates])
    with pytest.raises(RnngenError, match="forward model"):
        fill_lines(cloze, VOCAB, [line], rescore=cloze)


@pytest.mark.parametrize("line, message", [("the cat sat", "no blank"), ("the ___ ___", "2 blanks"),
                                           ("", "empty line"), ("  ___ ", "only the blank"),
                                           ("the cat___ .", "word of its own")])
def test_bad_lines_get_an_error_record(line, message):
    forward, cloze = models()
    results = fill_lines(cloze, VOCAB, ["the ___ .", line, "a ___ ."])
    assert results[1].error is not None and message in results[1].error and results[1].candidates == []
    assert results[0].candidates and results[2].candidates
    with pytest.raises(RnngenError, match=message):
        split_blank(line, "___")


@pytest.mark.parametrize("candidates, message", [(["sat", "zebra"], "'zebra' is not in"),
                                                 (["<eos>"], "cannot fill"), (["<unk>"], "--allow-unk")])
def test_bad_candidates_are_errors(candidates, message):
    with pytest.raises(RnngenError, match=message):
        fill_lines(models()[0], VOCAB, ["the ___ ."], candidates=candidates)


def test_sentence_probabilities_refuse_a_bidirectional_model():
    from rnngen.score import stream_logprob

    forward, cloze = models()
    with pytest.raises(RnngenError, match="no sentence probability"):
        score_lines(cloze, VOCAB, ["the cat sat ."])
    with pytest.raises(RnngenError, match="no sentence probability"):
        stream_logprob(cloze, np.array([2, 3, 0], dtype=np.int32))
    with pytest.raises(RnngenError, match="needs a bidirectional model"):
        pseudo_log_likelihood(forward, VOCAB, ["the cat sat ."])


def test_pseudo_log_likelihood_sums_the_cloze_terms():
    _, cloze = models()
    [s] = pseudo_log_likelihood(cloze, VOCAB, ["the cat sat ."], per_token=True)
    assert s.tokens == 4 and [t for t, _ in s.token_logprobs] == ["the", "cat", "sat", "."]
    assert s.logprob == pytest.approx(sum(lp for _, lp in s.token_logprobs))
    ids = np.array([VOCAB.index[t] for t in "the cat sat .".split()], dtype=np.int32)
    dist = cloze.next_logprobs(cloze.line_tops(ids[:, None])[:, 0])          # p(. | rest) at each position
    assert [lp for _, lp in s.token_logprobs] == pytest.approx(dist[np.arange(4), ids], rel=1e-5)


# --- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bi_model(tmp_path_factory):
    """A small bidirectional model trained briefly on the project corpus."""
    from rnngen.train import prepare_data, train

    out = tmp_path_factory.mktemp("bi") / "bi.npz"
    vocab, tr, va = prepare_data([str(CORPUS / "train.txt")], str(CORPUS / "valid.txt"))
    train(tr, va[:2000], vocab, ModelConfig(vocab_size=len(vocab), hidden=32, direction="bidirectional"),
          TrainConfig(epochs=3, seed=3), str(out), log=lambda m: None)
    return out


@pytest.fixture
def both(in_tmp, bi_model, tiny_model_path):
    shutil.copy(bi_model, in_tmp / "bi.npz")
    shutil.copy(tiny_model_path, in_tmp / "lm.npz")
    return in_tmp


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_fill_tsv_and_jsonl(both):
    r = run("fill", "-m", "bi.npz", "the dogs that the cat sees ___ .")
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 5 and all(len(row) == 3 for row in rows)
    probs = [float(row[0]) for row in rows]
    assert probs == sorted(probs, reverse=True)
    assert all(row[2] == f"the dogs that the cat sees {row[1]} ." for row in rows)
    j = run("fill", "-m", "lm.npz", "--format", "jsonl", "-k", "2", "the ___ runs .", "the dogs ___ .")
    recs = [json.loads(line) for line in j.stdout.splitlines()]
    assert [set(rec) for rec in recs] == [{"text", "candidates"}] * 2
    assert all(set(c) == {"token", "prob", "logprob"} and len(rec["candidates"]) == 2
               for rec in recs for c in rec["candidates"])


def test_fill_numbers_rows_of_several_lines_and_stdin_errors_stay_aligned(both):
    r = run("fill", "-m", "bi.npz", "-k", "2", "the ___ runs .", "the dogs ___ .")
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["1", "1", "2", "2"]
    r = run("fill", "-m", "bi.npz", "-k", "1", "-", input="the ___ runs .\nno blank\n\nthe ___ ___\nthe dogs ___ .\n")
    assert r.exit_code == 1
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [row[1] for row in rows[1:4]] == ["error"] * 3 and "no blank" in rows[1][3]
    assert "line 2: no blank" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("args, message", [
    (["fill", "-m", "bi.npz", "the dog runs ."], "sentence 1: no blank"),
    (["fill", "-m", "bi.npz", "the ___ ___ ."], "sentence 1: 2 blanks"),
    (["fill", "-m", "bi.npz", "the ___ .", ""], "sentence 2: empty line"),
    (["fill", "-m", "bi.npz", "--candidates", "runs,zebra", "the dog ___ ."], "'zebra' is not in"),
    (["fill", "-m", "bi.npz", "--rescore", "bi.npz", "the dog ___ ."], "forward model"),
    (["sample", "-m", "bi.npz"], "bidirectional model cannot generate"),
    (["score", "-m", "bi.npz", "--stream", "bi.npz"], "needs a forward model"),
])
def test_bad_input_messages(both, capsys, args, message):
    from rnngen.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_score_with_a_bidirectional_model_is_labelled(both):
    r = run("score", "-m", "bi.npz", "--format", "jsonl", "the dog runs .")
    rec = json.loads(r.stdout)
    assert {"pseudo_logprob", "pseudo_perplexity"} <= set(rec) and "logprob" not in rec and rec["tokens"] == 4
    assert "pseudo-log-likelihood" in r.stderr and "pseudo-perplexity" in r.stderr
    info = run("info", "bi.npz")
    assert "bidirectional" in info.stdout


def test_bidirectional_model_prefers_agreement(both):
    r = run("fill", "-m", "bi.npz", "--candidates", "run,runs", "the dogs ___ .")
    assert r.stdout.splitlines()[0].split("\t")[1] == "run"


def write_head(folder, lines: int = 300) -> None:
    """c.txt: the first lines of the project corpus."""
    (folder / "c.txt").write_text("\n".join((CORPUS / "train.txt").read_text().splitlines()[:lines]) + "\n")


def test_train_bidirectional_is_deterministic(in_tmp):
    write_head(in_tmp)
    args = ["train", "c.txt", "--bidirectional", "--cell", "gru", "--hidden", "8", "--epochs", "1", "--seed", "4",
            "--dropout", "0.2", "-q"]
    assert run(*args, "-o", "a.npz").exit_code == 0
    assert run(*args, "-o", "b.npz").exit_code == 0
    a, b = np.load("a.npz"), np.load("b.npz")
    assert any(k.startswith("param.r0.") for k in a.files)
    assert all((a[k] == b[k]).all() for k in a.files if k != "meta")


def test_fill_lines_is_in_the_api():
    import rnngen

    assert rnngen.fill_lines is fill_lines


def test_train_bidirectional_resumes_where_it_stopped(in_tmp):
    write_head(in_tmp)
    args = ["train", "c.txt", "--bidirectional", "--hidden", "8", "--epochs", "2", "--seed", "2", "--dropout", "0.1",
            "--batch-size", "8", "-q"]
    assert run(*args, "-o", "straight.npz").exit_code == 0
    assert run(*args, "--max-steps", "7", "-o", "part.npz").exit_code == 0
    assert run(*args, "--resume", "part.npz", "-o", "part.npz").exit_code == 0
    a, b = np.load("straight.npz"), np.load("part.npz")
    assert all((a[k] == b[k]).all() for k in a.files if k.startswith("param."))
