# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create or reuse .venv and install what they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
# Some machines pre-seed pip with a CPU-only torch wheel (find-links); torchvision's PyPI wheel
# links against the CUDA build of torch and fails at import with it, so install from the index only.
PIP    := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PY) -m pip
STAMP  := $(VENV)/.vitopt-installed

# The demo reads real weights and images from ../shared when present (flags/env override);
# the tests find ../shared themselves and must not inherit these.
demo: export VITOPT_CHECKPOINT ?= $(if $(wildcard $(SHARED)/weights/deit_tiny_patch16_224.pth),$(SHARED)/weights/deit_tiny_patch16_224.pth,)
demo: export VITOPT_DATA ?= $(if $(wildcard $(SHARED)/data/imagenet-mini/val),$(SHARED)/data/imagenet-mini/val,)

.PHONY: venv demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[trt-rtx,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitopt run benchmarks/recipes/demo.yaml -o build/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build
