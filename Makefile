# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv
# (re-installing only when pyproject.toml changed) and the machine's services first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: demo test lint system venv bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the project into $(VENV) (first run takes a few minutes)"
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip==26.0.1 >$(VENV)/pip.log 2>&1 \
		|| { grep -v 'is ignored' $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[agent,server,workers,dev]' >$(VENV)/pip.log 2>&1 \
		|| { grep -v 'is ignored' $(VENV)/pip.log; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

system:
	@bash scripts/ensure-system.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # every package ([tool.mypy] in pyproject.toml)

demo: venv system
	$(VENV)/bin/qsae-fleet demo $(DEMO_ARGS)

test: venv system lint
	RAY_AUTH_MODE=disabled $(VENV)/bin/pytest $(PYTEST_ARGS)

bench-quick: venv system
	$(PY) -m benchmarks.compression --quick --json .fleet/bench/compression.json

clean:
	rm -rf $(VENV) .fleet .pytest_cache .ruff_cache .mypy_cache
