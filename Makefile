# histoscreen: make help lists what you can run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
DATAFLOW_VENV := .venv-dataflow
DATAFLOW_REQUIREMENTS := beam_jobs/requirements-dataflow-check.txt
CHROMIUM := /usr/bin/chromium

# The embedded default: local folders stand in for the cloud buckets.
BUCKETS := buckets
SAMPLE_DATA := $(BUCKETS)/training-data/sample
MODELS := $(BUCKETS)/models
RESULTS := $(BUCKETS)/results
UPLOADS := $(BUCKETS)/uploads

# Keep TensorFlow quiet and google-auth off the network when there is no cloud account.
export TF_CPP_MIN_LOG_LEVEL := 3
export NO_GCE_CHECK := true
export GCE_METADATA_HOST := 127.0.0.1:9
export GCE_METADATA_IP := 127.0.0.1:9
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup lint format test pytest demo samples train score evaluate watch app \
	function-zip bench bench-training bench-training-quick bench-training-breakhis infra-check infra-plan clean \
	stream dataflow-check

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with the pinned requirements (and Chromium for browser tests)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	touch $@

lint: setup ## ruff lint and format check, then mypy on the packages ([tool.mypy] in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint infra-check dataflow-check ## everything CI runs: lint, policies, Dataflow dry runs, the test suite
	$(PY) -m pytest -q --ignore=tests/infra $(PYTEST_ARGS)

pytest: setup ## the Python test suite only (infra cases included)
	$(PY) -m pytest -q $(PYTEST_ARGS)

samples: setup ## generate the synthetic sample set into the local bucket
	$(PY) -m histo_common.samples --output $(SAMPLE_DATA) --count 300 --seed 0

demo: setup ## run the pipeline end to end on the embedded default (local folders)
	bash scripts/demo.sh

train: setup ## train on the sample bucket (DATA=..., OUTPUT=..., ARGS=... to change)
	$(PY) -m training --data $(or $(DATA),$(SAMPLE_DATA)) --output $(or $(OUTPUT),$(MODELS)) $(ARGS)

score: setup ## bulk-score images with Beam (INPUT='glob', OUTPUT=..., ARGS=...)
	$(PY) -m beam_jobs.score --input '$(or $(INPUT),$(SAMPLE_DATA)/**.png)' \
		--model $(MODELS)/histo-cnn --output $(or $(OUTPUT),$(RESULTS)/scores) $(ARGS)

evaluate: setup ## evaluate a scoring run against its folder labels (SCORES=..., OUTPUT=...)
	$(PY) -m beam_jobs.evaluate --scores $(or $(SCORES),$(RESULTS)/scores) \
		--output $(or $(OUTPUT),$(RESULTS)/evaluation) $(ARGS)

watch: setup ## run the upload function locally: drop images into buckets/uploads/
	$(PY) -m functions.watch --bucket $(UPLOADS) --model $(MODELS)/histo-cnn

stream: setup ## stream-score images dropped into buckets/uploads/ (Pub/Sub emulator; ARGS=...)
	$(PY) -m beam_jobs.stream --watch $(UPLOADS) --model $(MODELS)/histo-cnn \
		--output $(RESULTS)/stream $(ARGS)

$(DATAFLOW_VENV)/.installed: $(DATAFLOW_REQUIREMENTS)
	test -x $(DATAFLOW_VENV)/bin/python || $(PYTHON) -m venv $(DATAFLOW_VENV)
	$(DATAFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DATAFLOW_VENV)/bin/python -m pip install --quiet -r $(DATAFLOW_REQUIREMENTS)
	touch $@

dataflow-check: $(DATAFLOW_VENV)/.installed ## build both Beam jobs for Dataflow (--dry_run) and check them
	PYTHONPATH=$(CURDIR) $(DATAFLOW_VENV)/bin/python -m beam_jobs.dataflow_check

app: setup ## the Streamlit app on http://127.0.0.1:8501
	$(VENV)/bin/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port 8501

function-zip: setup ## build build/function-source.zip, the Cloud Functions source Terraform deploys
	$(PY) -m functions.package --output build/function-source.zip

bench: setup ## speed benchmarks (ratios against baselines measured in the same run)
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_function.py
	$(PY) bench/bench_tiles.py
	$(PY) bench/bench_slides.py
	$(PY) bench/bench_stream.py
	$(PY) bench/bench_launcher.py

bench-training: setup ## held-out IDC patients, full protocol (hours; a rerun resumes, ARGS=...)
	$(PY) bench/bench_training.py --mode full $(ARGS)

bench-training-quick: setup ## the same protocol, short budget, 2 groups, 1 seed (ablations: ARGS='--recipes ...')
	$(PY) bench/bench_training.py --mode quick $(ARGS)

bench-training-breakhis: setup ## BreakHis fields of view: split by patient vs by image, pooled
	$(PY) bench/bench_training.py --dataset breakhis --mode quick $(ARGS)

clean: ## remove generated buckets, reports and caches (keeps .venv)
	rm -rf $(BUCKETS) build .pytest_cache .mypy_cache

infra-check: setup ## terraform fmt, checkov and the offline terraform-compliance cases
	bash infra/check.sh

infra-plan: setup ## real terraform plan + terraform-compliance (needs a Google account and network)
	bash infra/plan.sh
