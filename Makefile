# The README's two commands: `make demo` and `make test`. Both (re)build .venv
# from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m camjax.main --config=configs/default.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no tests (e.g. a filtered run); that is not a
# failure of the code, so it maps to 0. Every other status passes through.
# Two workers (pytest-xdist) overlap one test's single-threaded XLA compile with
# another's run; --dist loadfile keeps a file on one worker, so the demo run
# (tests/test_demo.py) trains once.
PYTEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) \
		|| [ $$? -eq 5 ]

bench: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	$(VENV)/bin/python bench/step_throughput.py
	$(VENV)/bin/python bench/train_throughput.py
	$(VENV)/bin/python bench/loss_overhead.py
	$(VENV)/bin/python bench/linr_overhead.py
	$(VENV)/bin/python bench/localization_throughput.py

clean:
	rm -rf $(VENV) runs
