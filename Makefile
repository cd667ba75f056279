# commsgd: `make run` and `make test` build .venv from nothing when it is missing or older
# than pyproject.toml, then run the default job / the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned here, and installed first, because this is the pair the
# machine serves from local disk; a bare `torch` requirement would resolve the same way but
# pinning keeps every checkout on identical numerics.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: run test lint bench report mlflow-ui mlflow-server clean

$(BIN)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,joblib]"
	touch $@

run: $(BIN)/.stamp
	$(BIN)/commsgd-run

test: $(BIN)/.stamp
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(BIN)/.stamp
	$(BIN)/ruff check .

bench: $(BIN)/.stamp
	$(BIN)/python benchmarks/bench_simulator.py

report: $(BIN)/.stamp
	$(BIN)/commsgd-report --out reports/latest

mlflow-ui: $(BIN)/.stamp
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000

MLFLOW_PORT ?= 5050
mlflow-server: $(BIN)/.stamp
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow-server.db \
	  --artifacts-destination $(CURDIR)/mlflow-artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

clean:
	rm -rf $(VENV) outputs multirun mlruns.db mlartifacts .pytest_cache
