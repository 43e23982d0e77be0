# covidct — every workflow is one make target. `make demo` and `make test` are the quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MPLBACKEND ?= Agg
# Real-data tests and notebooks read $COVIDCT_DATA_ROOT (else ./data); .ci/run sets it, tests skip what is missing.

# `make serve RUN=runs/demo`: the local page and JSON API of one run (docs/serve.md); needs the [serve] extra.
.PHONY: serve install wheel demo test test-all test-slow test-rest lint test-tf test-tf-models test-jax test-notebooks strip-notebooks figures shipped-run notebooks-executed benchmarks clean

install: $(VENV)/.installed

# Creates the virtual environment on first use and reinstalls when the requirements change.
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	@touch $@

# dist/covidct-<version>-py3-none-any.whl: upload it beside a notebook on Colab, or pip install it anywhere.
# Built offline with the venv's pinned setuptools; build/ is cleared first so that no file deleted from src/
# survives into the wheel.
wheel: install
	rm -rf build dist/covidct-*.whl
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .
	@ls dist/covidct-*.whl

demo: install
	$(VENV)/bin/covidct demo

RUN ?= runs/demo
serve: install
	$(VENV)/bin/covidct serve --run $(RUN)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

TF_MARKS = -m "not jax and not gpu and not network and not notebooks and not slow" -q
# tests/models runs in the second stream (after the JAX tests and notebooks) to balance the two.
test-tf: install
	KERAS_BACKEND=tensorflow $(PY) -m pytest $(TF_MARKS) --ignore=tests/models

test-tf-models: install
	KERAS_BACKEND=tensorflow $(PY) -m pytest $(TF_MARKS) -p no:cacheprovider tests/models

# Tests marked `slow` (worker and multi-process runs, the wheel in a fresh venv): not in `make test`, which must
# stay under 15 minutes on 2 cores; run them before a release or after touching folds, packaging, distribution or Dask.
test-slow: install
	KERAS_BACKEND=tensorflow $(PY) -m pytest -m "slow and not jax and not gpu and not network and not notebooks" -q

# The JAX-without-TensorFlow training test needs a process in which nothing has imported TensorFlow.
test-jax: install
	KERAS_BACKEND=jax $(PY) -m pytest -m "jax" -q -p no:cacheprovider tests/train/test_backends.py
	KERAS_BACKEND=jax $(PY) -m pytest -m "jax" -q -p no:cacheprovider --ignore=tests/train/test_backends.py

# Executes every notebook once in smoke mode under Jupyter's inline backend (the test unsets MPLBACKEND for the
# kernel) and checks that each cell tagged `figure` shows an image and each `table` cell an HTML table.
test-notebooks: install
	COVIDCT_SMOKE=1 $(PY) -m pytest -m notebooks -q -p no:cacheprovider tests/test_notebook_rendering.py

# The TensorFlow suite uses about one core on average, so it runs beside the JAX tests + notebooks
# (notebooks work under notebooks/, tests under tmp folders and the repo root: no shared files).
test: lint
	$(MAKE) --no-print-directory -j2 -Oline test-tf test-rest

test-rest: install
	$(MAKE) --no-print-directory test-jax
	$(MAKE) --no-print-directory test-notebooks
	$(MAKE) --no-print-directory test-tf-models

test-all: install
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q

strip-notebooks: install
	$(PY) -m covidct.notebook_tools strip notebooks

# The README gallery (images/) from benchmarks/results/ and, for the confusion matrix, ROC and training curves, the
# shipped recipe's run made once by `make shipped-run` (figures never train).
figures: install
	$(PY) benchmarks/make_figures.py $(if $(wildcard runs/demo/gradcam/contact_sheet.png),--demo-run runs/demo)

shipped-run: install
	$(VENV)/bin/covidct train --config sars-cov-2-ct/small_cnn-lungs-robust-dataaug --evaluate

# Executed copies of the notebooks, with outputs, in docs/notebooks/ (full mode, data under $$COVIDCT_DATA_ROOT).
# ONLY=08_confusion_matrices runs one; SMOKE=1 tries it in smoke mode into runs/notebooks-smoke/;
# PARAMS="RUN=../runs/x" sets parameters-cell values; CHECK=1 only verifies the copies.
notebooks-executed: install
	$(PY) -m covidct.notebook_run $(foreach name,$(ONLY),--only $(name)) $(if $(SMOKE),--smoke) \
		$(foreach param,$(PARAMS),--param $(param)) $(if $(CHECK),--check)

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache
