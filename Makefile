# distree: `make demo` (set up + run the main job) and `make test` (set up + whole test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pyproject.toml asks for a torch range; constraints.txt pins the CPU build of 2.13.0 that pip finds first
# here (a loose range pulls a CUDA build). Every install goes through it.
CONSTRAINTS := constraints.txt
PIP := $(BIN)/pip install -q -c $(CONSTRAINTS)

.PHONY: venv install dev demo test lint typecheck format bench clean protos reproduce

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed pyproject.toml $(CONSTRAINTS)
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.bench-installed: $(VENV)/.dev-installed pyproject.toml
	$(BIN)/pip install -q $(TORCH) -e ".[dev,bench]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/distree demo

test: dev
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: dev typecheck
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments

# mypy over src/distree ([tool.mypy] in pyproject.toml); the protobuf / gRPC stubs it reads are the committed ones
typecheck: dev
	$(BIN)/mypy

format: dev
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

bench: $(VENV)/.bench-installed
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache

# Regenerate the runtime's protobuf / gRPC modules and their type stubs (.pyi, by mypy-protobuf); all committed.
# Needs grpcio-tools and mypy-protobuf from the dev extra (protoc finds mypy-protobuf's plugins on PATH).
protos: dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src \
		--mypy_out=src --mypy_grpc_out=src src/distree/runtime/protos/node.proto
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I src --python_out=src --mypy_out=src \
		src/distree/runtime/protos/kserve_v2.proto

# docs/results.md from the committed CIFAR-10 checkpoint: `make reproduce DATA=DIR [QUICK=1]` (resumable)
CHECKPOINT ?= checkpoints/wrn16-1-cifar10-distree
REPRO_OUT ?= runs/reproduce$(if $(QUICK),-quick)
reproduce: install
	@test -n "$(DATA)" || { echo "give the CIFAR-10 folder: make reproduce DATA=DIR (see checkpoints/README.md)"; exit 2; }
	$(BIN)/python experiments/reproduce.py --checkpoint $(CHECKPOINT) --data-dir $(DATA) --out $(REPRO_OUT) $(if $(QUICK),--quick)
