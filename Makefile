# The documented entry points. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/pip install --disable-pip-version-check -c constraints.txt
# Offline-safe defaults for everything we run: no telemetry, no hub downloads.
export SCARF_NO_ANALYTICS = true
export DO_NOT_TRACK = true
export UNSTRUCTURED_DISABLE_NOTICE = 1
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test bench lint format clean chromium screenshots

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; an unpinned resolve pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	# PyPI's torchvision breaks `import sentence_transformers` beside the CPU torch.
	-$(BIN)/pip uninstall -y -q torchvision 2>/dev/null
	touch $@

# Browser tests drive Debian's chromium; Playwright never downloads a browser.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(BIN)/context-server demo

test: install chromium
	$(BIN)/pytest

# Retake the README's screenshots (docs/screenshots) with the browser test.
screenshots: install chromium
	CONTEXT_SERVER_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/browser

bench: install
	$(BIN)/python benchmarks/ingest.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .context-server .pytest_cache .mypy_cache .ruff_cache
