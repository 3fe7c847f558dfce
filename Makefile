# lightning-mtl — one command each: `make train`, `make test` (both create .venv when missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TASKS     ?=
DATA      ?= synthetic
CONFIG    ?= experiments/$(DATA).yaml
META_CONFIG ?= experiments/meta/$(DATA).yaml
VARIANT   ?=
STUDY     ?= experiments/meta/studies/synthetic.yaml
LOMT_CONFIG ?= experiments/lomt/$(DATA).yaml
GRID      ?= experiments/sweeps/synthetic.yaml
RUNS      ?= runs/synthetic-smoke
comma := ,
LOGGER    ?= wandb
EPOCHS    ?=
LAMBDA    ?=
DATA_ROOT ?=
NAME      ?=
ARGS      ?=

TRAIN_FLAGS := --config $(CONFIG) --run.logger $(LOGGER) \
	$(if $(TASKS),--model.tasks '[$(TASKS)]') \
	$(if $(EPOCHS),--trainer.max_epochs $(EPOCHS)) \
	$(if $(LAMBDA),--model.lambda_ $(LAMBDA)) \
	$(if $(DATA_ROOT),--data.init_args.root $(DATA_ROOT)) \
	$(if $(NAME),--run.name $(NAME))

.PHONY: install train meta meta-study lomt sweep report test test-fast bench gpu-check gpu-wheels lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/lightning-mtl fit $(TRAIN_FLAGS) $(ARGS)

# meta-sparsity: meta-train λ, then meta-test (seen and unseen tasks); writes the table
meta: $(STAMP)
	$(BIN)/lightning-mtl meta --config $(META_CONFIG) \
		$(if $(VARIANT),--config experiments/meta/variants/$(VARIANT).yaml) --run.logger $(LOGGER) \
		$(if $(EPOCHS),--trainer.max_epochs $(EPOCHS)) \
		$(if $(DATA_ROOT),--data.init_args.datamodule.init_args.root $(DATA_ROOT)) \
		$(if $(NAME),--run.name $(NAME)) $(ARGS)

# meta-sparsity variants × seeds: λ curves and the meta-test, mean ± std (STUDY=file)
meta-study: $(STAMP)
	$(BIN)/lightning-mtl meta-study --config $(STUDY) $(ARGS)

# LOMT: stage-1 single-task profiles -> taps -> LOMT vs conventional; writes the comparison
lomt: $(STAMP)
	$(BIN)/lightning-mtl lomt --config $(LOMT_CONFIG) \
		$(if $(DATA_ROOT),--args '[--data.init_args.root$(comma) $(DATA_ROOT)]') $(ARGS)

# a sweep file's grid, one run after another (complete runs skipped, partial ones resumed)
sweep: $(STAMP)
	$(BIN)/lightning-mtl sweep $(GRID) $(ARGS)

# tables (Markdown, CSV) and figures (PNG) of a folder of runs: RUNS/report/
# (options: `lightning-mtl report --help`, e.g. ARGS="--latency_rounds 5 --latency_size '[256, 256]'")
report: $(STAMP)
	$(BIN)/lightning-mtl report $(RUNS) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/lightning-mtl bench $(ARGS)

# every GPU check, one command (at most 8 min on one GPU): the tests marked gpu, then the prox
# bench, into one JSON (ARGS="--json FILE", default runs/gpu-check.json); without CUDA a CPU dry run
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py $(ARGS)

# the wheels a lent GPU machine without network lacks, into .whl/ (docs/benchmarks.md#gpu)
gpu-wheels:
	bash scripts/gpu_wheels.sh

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
