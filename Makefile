# Two commands on a fresh machine with only Python 3.11: `make dev` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install chromium dev demo test test-ui bench clean

# Runtime pins first (what the image installs), then the test-only pins on top of them.
$(STAMP): pyproject.toml requirements.lock requirements-test.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==24.3.1
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-test.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

# Debian's Chromium for the UI test (Playwright drives /usr/bin/chromium; it never downloads a browser).
chromium:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

dev: install
	$(BIN)/medallion dev

demo: install
	$(BIN)/medallion demo --events 200000

# Two workers (pytest-xdist) on the two cores; the slowest tests (browser, restarts, crash loops) start first;
# the daemon's timing test and the heaviest S3 tests share one worker (tests/conftest.py).
test: install chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=12
	@echo "UI screenshots: $${MEDALLION_HOME:-$(CURDIR)/.medallion}/artifacts/ui/"

# `medallion dev` driven in headless Chromium; PNG screenshots land in $MEDALLION_HOME/artifacts/ui/.
test-ui: install chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ui tests/test_ui.py
	@echo "screenshots: $${MEDALLION_HOME:-$(CURDIR)/.medallion}/artifacts/ui/"

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf .medallion
