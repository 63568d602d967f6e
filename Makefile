# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages, the .venv, the mail stack).

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The tests that depend on the wall clock (marker "clock") run again with every test started
# at a pinned instant: a month's last minute and a working morning after the digest hour in
# `make test`; every time in docs/reliability.md in `make test-times`.
PINNED_TIMES     := 2026-11-30T23:59:00Z 2026-11-18T08:30:00Z
ALL_PINNED_TIMES := 2026-11-18T00:30:00Z 2026-11-18T08:30:00Z 2026-11-18T23:59:00Z \
                    2026-11-30T23:59:00Z 2025-12-31T23:59:00Z 2026-08-28T22:59:00Z \
                    2026-03-29T00:59:00Z 2026-10-25T00:59:00Z

.PHONY: demo test bench pytest pinned test-times lint typecheck install mailstack mailstack-down clean

demo: install mailstack
	$(PYTHON) scripts/demo.py

test: install mailstack lint typecheck pytest pinned

# Speed and memory, as ratios to a baseline doing the same I/O (docs/performance.md).
# Not part of `make test`; tests/test_bench.py runs each benchmark at a tiny size.
bench: install mailstack
	$(PYTHON) -m bench --update docs/performance.md

pytest: install mailstack
	$(PYTHON) -m pytest

pinned: install mailstack
	@for at in $(PINNED_TIMES); do \
		echo "== tests marked clock, each started at $$at"; \
		$(PYTHON) -m pytest -m clock -q --at $$at || exit 1; \
	done

test-times: install mailstack
	@for at in $(ALL_PINNED_TIMES); do \
		echo "== tests marked clock, each started at $$at"; \
		$(PYTHON) -m pytest -m clock -q --at $$at || exit 1; \
	done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

install: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap
	scripts/bootstrap
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The stack runs the test identity provider with the .venv's Python.
mailstack: install
	scripts/mailstack up

mailstack-down:
	scripts/mailstack down

clean:
	-scripts/mailstack down
	rm -rf $(VENV) .demo .mailstack .pytest_cache .mypy_cache .ruff_cache
