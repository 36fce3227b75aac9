# Two commands do all setup on a fresh machine:
#   make demo   install, then analyze the bundled sample post in embedded mode (out/)
#   make test   install, start RabbitMQ/Redis if needed, run the whole test suite
# `make up` runs the distributed pipeline locally (RabbitMQ + Redis + nanio S3).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE_TEXT := Astronaut Eileen Collins poses before commanding Discovery at NASA 's Johnson Space Center in Houston .

.PHONY: install demo test up lint protos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/riveg analyze --text "$(SAMPLE_TEXT)" --image samples/astronaut.jpg --id astronaut --out out

test: $(STAMP)
	bash .ci/deploy-tools.sh
	bash scripts/start-services.sh
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

up: $(STAMP)
	bash scripts/start-services.sh
	$(BIN)/riveg up

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check riveg/core riveg/serving riveg/orchestration services tests

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
