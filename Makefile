# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages, the .venv, the mail stack).

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test pytest lint typecheck install mailstack mailstack-down clean

demo: install mailstack
	$(PYTHON) scripts/demo.py

test: install mailstack lint typecheck pytest

pytest: install mailstack
	$(PYTHON) -m pytest

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

mailstack:
	scripts/mailstack up

mailstack-down:
	scripts/mailstack down

clean:
	-scripts/mailstack down
	rm -rf $(VENV) .demo .mailstack .pytest_cache .mypy_cache .ruff_cache
