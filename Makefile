# rnngen — every target installs what it needs into a local venv (.venv) first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RNNGEN := $(VENV)/bin/rnngen
DEMO   := demo-model.npz
CORPUS := corpora/agreement

.PHONY: demo test test-unit test-slow lint bench bench-paired bench-quality bench-memory bench-ttp bench-ttp-quick bench-startup clean

# What running rnngen needs (numpy, numba, scipy, click, tqdm): all that `make demo` installs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# Development tools and the optional MKL (so that tests run under both BLAS libraries).
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## demo: train on the project's generated corpus, print 10 samples, score two sentences
demo: $(VENV)/.installed
	$(RNNGEN) train $(CORPUS)/train.txt --valid $(CORPUS)/valid.txt -o $(DEMO) \
		--hidden 96 --epochs 30 --seed 1
	@echo "--- 10 samples (rnngen sample -m $(DEMO) --n 10 --seed 1)"
	$(RNNGEN) sample -m $(DEMO) --n 10 --seed 1
	@echo "--- a typical sentence and the same words scrambled (rnngen score)"
	$(RNNGEN) score -m $(DEMO) "the dogs that the cat sees run ." "run cat the sees dogs that the ."

## test: the test suite (slow checks are marked and left to test-slow)
test: $(VENV)/.dev-installed
	$(PY) -m pytest -q

## test-unit: the fast in-process tier (math, data structures, formats), for inner-loop work
test-unit: $(VENV)/.dev-installed
	$(PY) -m pytest -q -m "unit and not slow"

test-slow: $(VENV)/.dev-installed
	$(PY) -m pytest -q -m slow

## bench: rnngen vs PyTorch CPU side by side on Penn Treebank (../shared/corpora/ptb)
$(VENV)/.bench-installed: $(VENV)/.dev-installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) bench/run.py
	$(PY) bench/paired.py

## bench-paired: the two sides taking turns every 2 s, 20 rounds: the ratios to trust (about 12 min)
bench-paired: $(VENV)/.bench-installed
	$(PY) bench/paired.py

## bench-quality: the published PTB / Shakespeare configurations (hours; one at a time)
bench-quality: $(VENV)/.installed
	for run in rnn200 lstm-small shakespeare lstm-medium; do bash bench/quality.sh $$run; done

## bench-ttp: PTB valid ppl against wall time, rnngen defaults at 1/2/5/15/30 min vs faster-rnnlm (53 min of budgets + faster-rnnlm and warm-up: about 62 min on a 2-core Xeon)
bench-ttp: $(VENV)/.dev-installed
	$(PY) bench/time_to_ppl.py $(BENCH_TTP_ARGS)

## bench-ttp-quick: the same at budgets 1 and 5 min (about 10 min; BENCH_TTP_ARGS="--corpus shakespeare" for the other corpus)
bench-ttp-quick: $(VENV)/.dev-installed
	$(PY) bench/time_to_ppl.py --budgets 1,5 $(BENCH_TTP_ARGS)

## bench-startup: wall time of rnngen --help and of warm score commands (about a minute)
bench-startup: $(VENV)/.installed
	$(PY) bench/startup.py

## bench-memory: peak RSS and tokenising speed on a generated 50M-token corpus (a few minutes)
bench-memory: $(VENV)/.installed
	$(PY) bench/memory.py

## bench-mpi: 2 MPI ranks x 1 thread vs 1 process x 2 threads on PTB, and a scaling model (about a minute)
bench-mpi: $(VENV)/.dev-installed
	$(PY) bench/mpi.py

## bench-fill: fill-the-blank accuracy and speed on PTB, forward vs bidirectional (about 30 min; BENCH_FILL_ARGS="--train-seconds 120" for a quick run)
bench-fill: $(VENV)/.installed
	$(PY) bench/fill.py $(BENCH_FILL_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check rnngen tests bench corpora

clean:
	rm -rf $(VENV) rnngen/__pycache__ tests/__pycache__ .pytest_cache $(DEMO)
