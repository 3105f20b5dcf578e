# Two entry points, both self-contained on a fresh machine (Python 3.11, CPU, package registries only):
#   make book   — create the environment if missing, execute every chapter on the tiny profile, render _build/html
#   make test   — create the environment if missing, run the test suite (unit, bad input, notebook smoke runs)
#   make check-site — after make book: the built pages in headless chromium, and every internal link
#   make release    — tag v<version>, the release the chapters' Colab cells install (book/how_to_run.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clipdef-installed
# Artifacts (world, tiny CLIP, results) are cached inside the repository; progress bars off in batch runs.
export CLIPDEF_CACHE ?= $(CURDIR)/.cache/clipdef
export CLIPDEF_HEADLESS = 1
export TQDM_DISABLE = 1
export PYDEVD_DISABLE_FILE_VALIDATION = 1

.PHONY: book test check-site release env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# exact torch pins: these wheels are on local disk on the book's CPU machines (plain `torch` pulls CUDA builds)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[book,test]'
	# notebooks are committed without outputs: git's pre-commit hook checks (scripts/check_notebooks.py)
	-git rev-parse --git-dir >/dev/null 2>&1 && git config core.hooksPath .githooks
	touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# The built book in a real browser (Debian's chromium via Playwright) plus every internal link; run after `make book`
# (it does not rebuild). Screenshot and JSON report in _build/check/.
check-site: $(STAMP)
	@test -f _build/html/index.html || { echo "check-site: no _build/html/index.html; run make book first" >&2; exit 2; }
	$(BIN)/python scripts/check_site.py _build/html --screenshot _build/check/screenshot-02_attacks.png --out _build/check/report.json

# Two test workers with one thread each: oversubscribed OpenMP threads spin and slow everything down.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -ra --durations=10

# Tags HEAD as v<clipdef.__version__>; refuses a dirty tree, an existing tag, and chapter pins that disagree with the
# version or _config.yml's repository. Pushes nothing: it prints the push command.
release: $(STAMP)
	$(BIN)/python scripts/release.py

clean:
	rm -rf _build runs .pytest_cache
