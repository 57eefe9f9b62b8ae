# edgevlp: two commands set everything up on a fresh machine: `make demo` and `make test`.
# Only python3, make, a C++ compiler and the package registries are needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, pinned: a bare `torch` requirement resolved from scratch pulls a
# multi-GB CUDA build. The project's extras only ask for torch>=2.4, which this satisfies.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.edgevlp-installed
PYTEST_ARGS ?=
# The Triton serving venv (edgevlp serve, tests/test_serve.py): nvidia-pytriton ships a real tritonserver
# (Python backend) and pins numpy<2, so it lives apart from .venv, with edgevlp's runtime installed in it.
SERVE_VENV ?= .serve-venv
SERVE_STAMP := $(SERVE_VENV)/.edgevlp-serve
PYTRITON_SPEC ?= nvidia-pytriton==0.7.0

.PHONY: install serve-env test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt $(wildcard runtime/*.cpp runtime/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	$(BIN)/python -c "import edgevlp._preprocess, torch, transformers; print('edgevlp installed: torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

serve-env: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml CMakeLists.txt $(wildcard runtime/*.cpp runtime/*.h)
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet "$(PYTRITON_SPEC)" "numpy<2"
	$(SERVE_VENV)/bin/python -m pip install --quiet -e . "numpy<2"
	$(SERVE_VENV)/bin/python -c "import pytriton, edgevlp.runtime, edgevlp._preprocess; print('serve env ready: nvidia-pytriton + edgevlp runtime in $(SERVE_VENV)')"
	touch $@

test: install serve-env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python apps/demo.py

bench: install
	$(BIN)/edgevlp bench --preprocess
	$(BIN)/python benchmarks/runtime.py
	$(BIN)/edgevlp bench demo-blip demo-owlvit --data shapes:val --output out/bench

clean:
	rm -rf build dist .pytest_cache .hypothesis demo-out out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(VENV) $(SERVE_VENV)
