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
# calibration images for the compression steps; without ../shared, noise images (random weights anyway)
demo: export VITOPT_CALIB ?= $(if $(wildcard $(SHARED)/data/imagenet-mini/train),$(SHARED)/data/imagenet-mini/train,build/noise-images)
# the demo sweep: dense, slim at two budgets, lowrank, and slim + lowrank (re-runs reuse finished variants)
DEMO_VARY := --vary slim.macs=off,0.5,0.75 --vary lowrank.params=off,0.9

.PHONY: venv demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[trt-rtx,test,report]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	test -d "$$VITOPT_CALIB" || $(PY) benchmarks/noise_images.py build/noise-images
	$(VENV)/bin/vitopt sweep benchmarks/recipes/demo.yaml $(DEMO_VARY) -o build/demo
	$(VENV)/bin/vitopt report build/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build
