# The two commands a newcomer needs:  `make run`  and  `make test`.
# Both create .venv and install what they need; Kafka comes from scripts/kafka.py.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench soak kafka-start kafka-stop clean prerequisites

run: $(STAMP)
	$(PY) scripts/run.py

test: $(STAMP) node_modules/.installed
	$(PY) scripts/ensure_chromium.py
	$(PY) scripts/ensure_deploy_packages.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest --cov

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) node_modules/.installed
	$(PY) bench/run.py

kafka-start:
	@$(PYTHON) scripts/kafka.py start --name dev --port 9092

kafka-stop:
	@$(PYTHON) scripts/kafka.py stop --name dev

prerequisites:
	@$(PYTHON) scripts/prerequisites.py

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) scripts/prerequisites.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .mypy_cache .coverage
