# make demo: install everything, then run the main job end to end on the demo corpus.
# make test: install everything, then run the test suite.
# make bench-smoke: every script in benchmarks/ once at its smallest size (benchmarks/smoke.py).
VENV ?= .venv
DEMO_DIR ?= demo-output

.PHONY: install demo test bench bench-smoke clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh pipelines/engine_jars.sha256
	VENV=$(VENV) scripts/install.sh
	touch $@

# The end_to_end Prefect flow, on Prefect's local ephemeral server (no server to start).
demo: install
	$(VENV)/bin/python -m impax.flows.demo $(DEMO_DIR)

# On one pytest-xdist worker per core; tests/conftest.py keeps the tests that share an
# expensive fixture (the demo datasets, the Prefect server) on one worker.
test: install
	$(VENV)/bin/python -m pytest -q -n auto

bench: install
	$(VENV)/bin/python benchmarks/pipeline_throughput.py
	$(VENV)/bin/python benchmarks/pipeline_memory.py
	$(VENV)/bin/python benchmarks/pipeline_small_examples.py
	$(VENV)/bin/python benchmarks/model_step_time.py
	$(VENV)/bin/python benchmarks/model_load_balance.py --steps 300
	$(VENV)/bin/python benchmarks/loader_throughput.py
	$(VENV)/bin/python benchmarks/train_step_time.py

# Each benchmark runs to its end and prints its figures (not their values): CI runs it after
# the suite (.ci/run).
bench-smoke: install
	$(VENV)/bin/python benchmarks/smoke.py --jobs 2

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
