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
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(BIN)/.stamp
	$(BIN)/ruff check .

bench: $(BIN)/.stamp
	$(BIN)/python benchmarks/bench_simulator.py

report: $(BIN)/.stamp
	$(BIN)/commsgd-report --out reports/latest

# MLflow 3's UI opens experiments on its GenAI overview; the links printed first open each
# experiment's runs table (its machine-learning view), and every run's summary prints its page.
mlflow-ui: $(BIN)/.stamp
	$(BIN)/python -m suite.tracking links --tracking-uri sqlite:///$(CURDIR)/mlruns.db --ui http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000

# A tracking server for sweeps with parallel jobs or several machines. The backend store is any
# SQLAlchemy URI: SQLite here; PostgreSQL with
#   make mlflow-server MLFLOW_BACKEND=postgresql://user:pass@host/db   (pip install psycopg2-binary)
# Runs then use tracking.uri=http://127.0.0.1:$(MLFLOW_PORT). The GenAI job runner is switched off.
MLFLOW_PORT ?= 5050
MLFLOW_BACKEND ?= sqlite:///$(CURDIR)/mlflow-server.db
mlflow-server: $(BIN)/.stamp
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server \
	  --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(CURDIR)/mlflow-artifacts \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 2

clean:
	rm -rf $(VENV) outputs multirun mlruns.db mlartifacts .pytest_cache
