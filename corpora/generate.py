"""Generate the ``agreement`` corpus and report its exact entropy floor.

The corpus is sampled from a small, unambiguous probabilistic context-free grammar
(PCFG) of English-like sentences with subject-verb number agreement across relative
clauses (nested up to depth 2) and prepositional phrases, e.g.

    the dogs that the cat near the house chases bark .

Because every string has exactly one derivation, the probability of a sentence is the
product of the rule probabilities used to generate it, so the cross-entropy of a split
under the true source is known exactly. A language model reading the sentences as one
stream (each line followed by an end-of-sentence token, which is predicted too) cannot
beat that floor in expectation, since the sentences are drawn i.i.d.

Usage:
    python corpora/generate.py                 # write corpora/agreement/{train,valid}.txt
    python corpora/generate.py --self-check    # verify unambiguity with an exact parser
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path

# ---------------------------------------------------------------------------
# Lexicon: (singular, plural) pairs. No word belongs to two categories except
# "the", which is a determiner of either number (the noun settles which).
# ---------------------------------------------------------------------------
NOUNS = [("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"),
         ("girl", "girls"), ("boy", "boys"), ("teacher", "teachers"),
         ("farmer", "farmers")]
PLACES = [("house", "houses"), ("garden", "gardens"), ("river", "rivers"),
          ("park", "parks"), ("table", "tables"), ("bridge", "bridges")]
# Verbs as (agrees with a singular subject, agrees with a plural subject).
INTRANSITIVE = [("sleeps", "sleep"), ("runs", "run"), ("smiles", "smile"),
                ("laughs", "laugh"), ("waits", "wait"), ("sings", "sing")]
TRANSITIVE = [("chases", "chase"), ("sees", "see"), ("likes", "like"),
              ("follows", "follow"), ("helps", "help"), ("watches", "watch"),
              ("knows", "know"), ("finds", "find")]
DETERMINERS = [("the", "the"), ("a", "some"), ("this", "these")]
ADJECTIVES = ["big", "small", "old", "young", "happy", "lazy"]
PREPOSITIONS = ["near", "behind", "beside", "under", "above"]

NUMBERS = ("sg", "pl")
MAX_DEPTH = 2           # relative clauses nest at most this deep

# Structural probabilities.
P_ADJ = 0.1             # a noun phrase has an adjective
P_PP = 0.3              # a noun phrase has a prepositional phrase
P_RC = {2: 0.7, 1: 0.35}  # a noun phrase with this depth budget has a relative clause
P_SUBJECT_RC = 0.5      # a relative clause is "that VP" (else "that NP Vt")
P_INTRANSITIVE = 0.5    # a verb phrase is intransitive

Grammar = dict[str, list[tuple[float, tuple[str, ...]]]]


def _uniform(words) -> list[tuple[float, tuple[str, ...]]]:
    """Rules choosing one of ``words`` uniformly."""
    return [(1.0 / len(words), (w,)) for w in words]


def _optional(symbol: str, p: float) -> list[tuple[float, tuple[str, ...]]]:
    """Rules for a symbol that appears with probability ``p`` (else the empty string)."""
    return [(p, (symbol,)), (1.0 - p, ())]


def build_grammar() -> Grammar:
    """The PCFG as {nonterminal: [(probability, right-hand side), ...]}.

    Nonterminals are the dictionary keys; every other symbol is a word. ``NP_n_d`` is
    a noun phrase of number ``n`` whose relative clauses may nest ``d`` levels deep.
    """
    g: Grammar = {"S": [(0.5, (f"NP_{n}_{MAX_DEPTH}", f"VP_{n}_{MAX_DEPTH}", "."))
                        for n in NUMBERS]}
    for i, n in enumerate(NUMBERS):
        g[f"DET_{n}"] = _uniform([pair[i] for pair in DETERMINERS])
        g[f"N_{n}"] = _uniform([pair[i] for pair in NOUNS])
        g[f"PLACE_{n}"] = _uniform([pair[i] for pair in PLACES])
        g[f"VI_{n}"] = _uniform([pair[i] for pair in INTRANSITIVE])
        g[f"VT_{n}"] = _uniform([pair[i] for pair in TRANSITIVE])
    g["ADJ"] = _uniform(ADJECTIVES)
    g["PREP"] = _uniform(PREPOSITIONS)
    g["ADJ?"] = _optional("ADJ", P_ADJ)
    g["PP?"] = _optional("PP", P_PP)
    # The object of a preposition is a bare noun phrase, so a following relative
    # clause can only attach to the head noun: this keeps the grammar unambiguous.
    g["PP"] = [(0.5, ("PREP", f"DET_{m}", "ADJ?", f"PLACE_{m}")) for m in NUMBERS]
    for n in NUMBERS:
        for d in range(MAX_DEPTH + 1):
            g[f"NP_{n}_{d}"] = [(1.0, (f"DET_{n}", "ADJ?", f"N_{n}", "PP?")
                                 + ((f"RC?_{n}_{d}",) if d > 0 else ()))]
            g[f"VP_{n}_{d}"] = [(P_INTRANSITIVE, (f"VI_{n}",))] + [
                ((1 - P_INTRANSITIVE) / 2, (f"VT_{n}", f"NP_{m}_{d}")) for m in NUMBERS]
            if d > 0:
                g[f"RC?_{n}_{d}"] = _optional(f"RC_{n}_{d}", P_RC[d])
                # "that" + verb: subject relative; "that" + determiner: object relative.
                g[f"RC_{n}_{d}"] = [(P_SUBJECT_RC, ("that", f"VP_{n}_{d - 1}"))] + [
                    ((1 - P_SUBJECT_RC) / 2, ("that", f"NP_{m}_{d - 1}", f"VT_{m}"))
                    for m in NUMBERS]
    return g


GRAMMAR = build_grammar()


def _expand(symbol: str, rng: random.Random, words: list[str]) -> float:
    """Append a random expansion of ``symbol`` to ``words``; return its log-probability."""
    rules = GRAMMAR.get(symbol)
    if rules is None:
        words.append(symbol)
        return 0.0
    u = rng.random()
    for p, rhs in rules:  # noqa: B007 - the chosen rule is used after the loop
        u -= p
        if u < 0:
            break
    return math.log(p) + sum(_expand(s, rng, words) for s in rhs)


def generate(n: int, seed: int = 0) -> list[tuple[str, float]]:
    """``n`` sentences sampled with ``seed``, each as (sentence, natural log-probability)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words: list[str] = []
        logp = _expand("S", rng, words)
        out.append((" ".join(words), logp))
    return out


def count_tokens(lines: list[str]) -> int:
    """Tokens under the stream protocol: the words plus one end-of-sentence per line."""
    return sum(len(line.split()) + 1 for line in lines)


def floor(samples: list[tuple[str, float]]) -> float:
    """Cross-entropy (nats/token) of (sentence, log-probability) pairs under the source."""
    return -sum(logp for _, logp in samples) / count_tokens([s for s, _ in samples])


def bigram_cross_entropy(train: list[str], valid: list[str], k: float = 0.1) -> float:
    """Nats/token on ``valid`` of an add-``k`` bigram fitted on ``train``.

    Each line is preceded by the end-of-sentence token as context, and the token that
    ends the line is predicted too. The vocabulary is the training words plus that token.
    """
    eos = "<eos>"

    def pairs(lines):
        for line in lines:
            toks = [eos] + line.split() + [eos]
            yield from zip(toks, toks[1:])

    pair_counts = Counter(pairs(train))
    context_counts = Counter(prev for prev, _ in pairs(train))
    vocab = {w for line in train for w in line.split()} | {eos}
    unseen = {w for line in valid for w in line.split()} - vocab
    if unseen:
        raise ValueError(f"valid words missing from train: {sorted(unseen)}")
    nll = sum(-math.log((pair_counts[p] + k) / (context_counts[p[0]] + k * len(vocab)))
              for p in pairs(valid))
    return nll / count_tokens(valid)


def inside(sentence: str) -> tuple[float, int]:
    """Total probability of ``sentence`` under GRAMMAR and its number of derivations.

    An exact, independent check on the generator: a memoised recursive-descent parser
    that sums over *all* derivations (the grammar has no left recursion).
    """
    words = sentence.split()

    @cache
    def spans(symbol: str, i: int) -> tuple[tuple[int, float, int], ...]:
        """(end, probability, derivations) of every way ``symbol`` derives words[i:end]."""
        rules = GRAMMAR.get(symbol)
        if rules is None:
            return ((i + 1, 1.0, 1),) if i < len(words) and words[i] == symbol else ()
        ends: dict[int, list] = {}
        for p, rhs in rules:
            partial = {i: (p, 1)}
            for sym in rhs:
                step: dict[int, tuple[float, int]] = {}
                for pos, (q, c) in partial.items():
                    for end, q2, c2 in spans(sym, pos):
                        old_q, old_c = step.get(end, (0.0, 0))
                        step[end] = (old_q + q * q2, old_c + c * c2)
                partial = step
            for end, (q, c) in partial.items():
                acc = ends.setdefault(end, [0.0, 0])
                acc[0] += q
                acc[1] += c
        return tuple((end, q, c) for end, (q, c) in ends.items())

    for end, q, c in spans("S", 0):
        if end == len(words):
            return q, c
    return 0.0, 0


def self_check(n: int = 20000, seed: int = 12345) -> bool:
    """Check rule probabilities, known (un)grammatical strings and, on ``n`` samples,
    that each sentence has one derivation whose probability is the generator's."""
    ok = True
    for symbol, rules in GRAMMAR.items():
        if abs(sum(p for p, _ in rules) - 1.0) > 1e-12:
            print(f"FAIL: rules of {symbol} do not sum to 1")
            ok = False
    examples = {
        "the dogs that the cat near the house chases sleep .": True,
        "the dogs that the cat near the house chase sleep .": False,
        "the dogs that the cat near the house chases sleeps .": False,
        "a girl that sees the boys that watch some birds smiles .": True,
        "a girl that sees the boys that watch some birds smile .": False,
        "the cat that the dog that the horse sees chases sleeps .": True,
        "the cat that the dog that the horse that a boy likes sees chases sleeps .": False,
    }
    for sentence, grammatical in examples.items():
        if (inside(sentence)[0] > 0) != grammatical:
            print(f"FAIL: {sentence!r} should be {'' if grammatical else 'un'}grammatical")
            ok = False
    bad = 0
    for sentence, logp in generate(n, seed):
        q, c = inside(sentence)
        if c != 1 or abs(math.log(q) - logp) > 1e-9:
            bad += 1
            if bad <= 5:
                print(f"FAIL: {sentence!r}: {c} derivations, log P {math.log(q) if q else 0:.12f}"
                      f" vs generated {logp:.12f}")
    ok = ok and bad == 0
    print(f"self-check: {n} sampled sentences, {bad} with a derivation count != 1 or a"
          f" log-probability mismatch; {len(examples)} fixed examples; {'OK' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sentences", type=int, default=7000)
    parser.add_argument("--valid-sentences", type=int, default=900)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "agreement")
    parser.add_argument("--self-check", action="store_true",
                        help="verify unambiguity with an exact parser instead of writing files")
    args = parser.parse_args(argv)

    if args.self_check:
        start = time.perf_counter()
        ok = self_check()
        print(f"({time.perf_counter() - start:.1f} s)")
        return 0 if ok else 1

    samples = generate(args.train_sentences + args.valid_sentences, args.seed)
    train, valid = samples[:args.train_sentences], samples[args.train_sentences:]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("valid", valid)):
        (args.out / f"{name}.txt").write_text("".join(s + "\n" for s, _ in split))

    train_lines, valid_lines = [s for s, _ in train], [s for s, _ in valid]
    types = {w for line in train_lines + valid_lines for w in line.split()}
    print(f"wrote {args.out}: train {len(train)} lines / {count_tokens(train_lines)} tokens,"
          f" valid {len(valid)} lines / {count_tokens(valid_lines)} tokens"
          f" (tokens include one end-of-sentence per line), {len(types)} word types")
    print(f"source floor  valid: {floor(valid):.4f} nats/token (train: {floor(train):.4f})")
    print(f"bigram (add-0.1) valid: {bigram_cross_entropy(train_lines, valid_lines):.4f}"
          f" nats/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
