# Visual product recommendations: set-up, build, run and test.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

MODEL_NAME ?= product_embedder
BACKBONE ?= efficientnet_lite0
MODEL_PT := model_repository/$(MODEL_NAME)/1/model.pt
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: setup data protos check-protos lint model test run index demo clean

## setup: pinned virtual environment and Fashion-MNIST data (idempotent)
setup: $(VENV)/.installed data

$(VENV)/.installed: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements.lock
	touch $@

data:
	@if [ -f "$(FASHION_MNIST_DIR)/t10k-labels-idx1-ubyte.gz" ]; then \
		echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found in $(FASHION_MNIST_DIR)."; \
		echo "Install it with 'sudo apt-get install dataset-fashion-mnist', or put the four files"; \
		echo "train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"; \
		echo "in a folder and run: make setup FASHION_MNIST_DIR=/that/folder (and export FASHION_MNIST_DIR for the service)."; \
		exit 1; \
	fi

## protos: regenerate the committed Python stubs (recsys_api/, with .pyi) from protos/ with the pinned grpcio-tools
protos: $(VENV)/.installed
	$(PY) -m tools.protos

## check-protos: fails when the stubs differ from what protos/ gives, or when buf lint (protos/buf.yaml) finds a fault
check-protos: $(VENV)/.installed
	$(PY) -m tools.protos --check

## lint: ruff and mypy (configured in pyproject.toml) on the whole tree, and check-protos
lint: check-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## model: export the TorchScript embedding model and its Triton config into model_repository/, and the image model
## that decodes photos in Triton for it (IMAGE_PREPROCESSING=triton)
IMAGE_MODEL_CONFIG := model_repository/image_embedder/config.pbtxt
model: $(MODEL_PT) $(IMAGE_MODEL_CONFIG)

$(IMAGE_MODEL_CONFIG): $(MODEL_PT) model_export/image_model.py model_export/triton_image_model.py gateway/images.py \
		gateway/domain.py
	$(PY) -m model_export.image_model --repository model_repository --embedder $(MODEL_NAME)

$(MODEL_PT): $(VENV)/.installed $(wildcard model_export/*.py)
	$(PY) -m model_export --backbone $(BACKBONE) --name $(MODEL_NAME) --repository model_repository

## test: the whole suite against real tritonserver, redis-server and the Qdrant engine
test: setup model
	$(PY) -m pytest -q -ra tests

## run: set up, build the model, start tritonserver + redis-server, index the demo catalog, then serve the gateway
## (python -m gateway) and the web page until Ctrl-C
run: setup model
	$(PY) -m stack.run

## index: ingest Fashion-MNIST (or SOURCE=folder CSV=products.csv) into the catalog; resumable; RECREATE=1 starts over
SOURCE ?= fashion-mnist
index: setup model
	$(PY) -m ops.index $(SOURCE) $(if $(CSV),--csv $(CSV)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(RECREATE),--recreate)

## demo: send a sample image to the running gateway through recsys_client and print the recommendations
demo: $(VENV)/.installed
	$(PY) -m stack.demo $(if $(TOKEN),--token $(TOKEN))

clean:
	rm -rf model_repository/*/[0-9]* model_repository/*/config.pbtxt .pytest_cache .mypy_cache .ruff_cache

.PHONY: finetune eval rollout rollback

## finetune: fine-tune the embedder on the Fashion-MNIST train split, export model version 2 and its training card
## (QUICK=1: a tiny run in a minute, exported under build/quick/; FORCE=1: replace an existing version)
finetune: setup model
	$(PY) -m training $(if $(QUICK),--quick) $(if $(FORCE),--force)

## eval: measure retrieval, personalisation and latency of every served model version; report in reports/
eval: setup model
	$(PY) -m evaluation $(if $(QUICK),--quick)

## rollout: embed the catalog with model VERSION (default: the newest) next to the serving one, then switch to it
rollout: setup model
	$(PY) -m ops.rollout out $(SOURCE) $(if $(VERSION),--version $(VERSION)) $(if $(CSV),--csv $(CSV)) \
		$(if $(LIMIT),--limit $(LIMIT)) $(if $(RECREATE),--recreate)

## rollback: switch the catalog back to the previous model version's collection (or VERSION=N)
rollback: setup
	$(PY) -m ops.rollout back $(if $(VERSION),--version $(VERSION))

## model-artifact: model VERSION (its model.pt, the production config and its training card) as the versioned
## tarball build/artifacts/$(MODEL_NAME)-VERSION.tar.gz, and the image model as image_embedder-1.tar.gz, which
## deploy/docker/model-repository.Dockerfile unpacks
## model-load / model-unload: the Triton at TRITON_URL (deploy/k8s: triton-headless:8001, every pod in turn) starts /
## stops serving model VERSION through its repository API (explicit model control); unload refuses the version the
## catalog alias serves. A new version: make model-load VERSION=N+1, make rollout VERSION=N+1, make model-unload VERSION=N
.PHONY: model-artifact model-load model-unload
model-artifact: $(VENV)/.installed
	$(PY) -m model_export.artifact --name $(MODEL_NAME) --version $(or $(VERSION),$(error set VERSION=N))
	$(PY) -m model_export.artifact --name image_embedder --version 1

model-load: $(VENV)/.installed
	$(PY) -m ops.model_versions load $(or $(VERSION),$(error set VERSION=N))

model-unload: $(VENV)/.installed
	$(PY) -m ops.model_versions unload $(or $(VERSION),$(error set VERSION=N))

## bench: every layer (model, Triton, gateway, Qdrant, Redis, ingestion) measured in one run on the same images,
## written to reports/bench.json and reports/bench.md; BENCH_ARGS="--points 1000000" searches 1 M vectors,
## BENCH_ARGS="--triton-variants 1x2,2x1" also compares Triton instance x thread counts, --smoke checks it runs
.PHONY: bench triton-sweep
bench: setup model
	$(PY) -m bench $(BENCH_ARGS)

## triton-sweep: Triton alone at concurrency 1..64 with its batcher's statistics, and the same sweep as a perf_analyzer
## command; TRITON_URL=host:8001 measures that server (a GPU replica), otherwise the local CPU one (SWEEP_ARGS: more)
triton-sweep: setup model
	$(PY) -m bench.triton_sweep $(if $(TRITON_URL),--url $(TRITON_URL)) $(SWEEP_ARGS)

## webui: the web page (http://127.0.0.1:8080 unless WEBUI_HOST/WEBUI_PORT say otherwise) against a running gateway
GATEWAY ?= localhost:50051
.PHONY: webui
webui: $(VENV)/.installed
	$(PY) -m webui --gateway $(GATEWAY)

## load: a k6 profile against a running gateway (`make run`): PROFILE=smoke|steady|ramp|spike, RATE (req/s), DURATION;
## TOKEN (a bearer token with the read scope, handed to k6 in its environment, not on its command line), CACERT (TLS
## trusting that CA's PEM file), CERT and KEY (a client certificate for mutual TLS); the summary goes to LOAD_SUMMARY
PROFILE ?= steady
LOAD_SUMMARY ?= reports/load-$(PROFILE).json
LOAD_TLS = $(foreach name,CACERT CERT KEY,$(if $($(name)),--env $(name)=$(abspath $($(name)))))
.PHONY: load
load: export RECSYS_TOKEN := $(TOKEN)
load: $(VENV)/.installed
	mkdir -p $(dir $(LOAD_SUMMARY))
	$(VENV)/bin/k6 run --env PROFILE=$(PROFILE) --env TARGET=$(GATEWAY) $(if $(RATE),--env RATE=$(RATE)) \
		$(if $(DURATION),--env DURATION=$(DURATION)) $(LOAD_TLS) --summary-export=$(LOAD_SUMMARY) \
		deploy/load/k6/recommend.js

## deploy-secrets: the tokens, TLS certificate, Redis password and Qdrant key that deploy/k8s and deploy/compose
## refuse to start without, into deploy/k8s/secrets and deploy/compose/secrets (kept if present; ROTATE=1 renews)
.PHONY: deploy-secrets
deploy-secrets: $(VENV)/.installed
	$(PY) -m ops.secrets $(if $(ROTATE),--rotate)

.PHONY: soak overload fuzz

## soak: the stack at ~70 % of its measured capacity for SOAK_SECONDS (default 1800); report in reports/
SOAK_SECONDS ?= 1800
soak: setup model
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m ops.soak

## overload: the stack offered 3x its measured capacity of image queries; report in reports/
overload: setup model
	$(PY) -m ops.overload

## fuzz: image decoding and request parsing fuzzed for FUZZ_SECONDS each (default 300)
FUZZ_SECONDS ?= 300
fuzz: setup model
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py
