# Two commands do everything: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.pram_ros_setup
DATA ?= data
# Keep the tests' DDS traffic on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py setup.cfg package.xml tools/build_tf2_msgs.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pram_ros needs Python 3.11+"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, from its pin, so nothing else pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	@command -v cmake >/dev/null && command -v ninja >/dev/null || $(PIP) install -q -c constraints.txt cmake ninja
	@$(PY) -c 'import tf2_msgs.msg' 2>/dev/null || { echo "building tf2_msgs"; tools/build_tf2_msgs.sh $(VENV); }
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@
	@echo "setup done: $(VENV)"

demo: setup
	$(VENV)/bin/pram-ros demo --data $(DATA)

test: setup
	$(PY) -m pytest -q test

clean:
	rm -rf $(VENV) $(DATA) build *.egg-info
