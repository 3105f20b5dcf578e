# Two entry points, both self-contained on a fresh machine (Python 3.11, CPU, package registries only):
#   make book   — create the environment if missing, execute every chapter on the tiny profile, render _build/html
#   make test   — create the environment if missing, run the test suite (unit, bad input, notebook smoke runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clipdef-installed
# Artifacts (world, tiny CLIP, results) are cached inside the repository; progress bars off in batch runs.
export CLIPDEF_CACHE ?= $(CURDIR)/.cache/clipdef
export CLIPDEF_HEADLESS = 1
export TQDM_DISABLE = 1
export PYDEVD_DISABLE_FILE_VALIDATION = 1

.PHONY: book test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# exact torch pins: these wheels are on local disk on the book's CPU machines (plain `torch` pulls CUDA builds)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[book,test]'
	touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# Two test workers with one thread each: oversubscribed OpenMP threads spin and slow everything down.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -ra --durations=10

clean:
	rm -rf _build runs .pytest_cache
