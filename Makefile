# Two commands do everything: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.pram_ros_setup
DATA ?= data
# ROS 2 pieces no registry carries (launch, ros2cli, bondpy, two interface packages), when present
ROS2_SHARED ?= ../shared/ros2
# The whole suite; the 15 slowest tests are listed at the end, so CI output shows where time goes.
PYTEST := $(PY) -m pytest -q --durations=15 test
# Keep the tests' DDS traffic on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup demo test test-hog clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-ros2cli.txt constraints.txt setup.py setup.cfg package.xml tools/build_interfaces.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pram_ros needs Python 3.11+"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, from its pin, so nothing else pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	@command -v cmake >/dev/null && command -v ninja >/dev/null || $(PIP) install -q -c constraints.txt cmake ninja
	@$(PY) -c 'import tf2_msgs.msg' 2>/dev/null || tools/build_interfaces.sh $(VENV) tools/tf2_msgs
	@if [ -d $(ROS2_SHARED)/wheels ]; then \
	  echo "installing launch, ros2cli, bondpy and colcon from $(ROS2_SHARED)"; \
	  $(PIP) install -q -c constraints.txt -r requirements-ros2cli.txt && \
	  $(PIP) install -q --no-index --no-deps $(ROS2_SHARED)/wheels/*.whl || exit 1; \
	  for pkg in composition_interfaces bond; do \
	    $(PY) -c "import $$pkg" 2>/dev/null || [ ! -d $(ROS2_SHARED)/interfaces/$$pkg ] || \
	      tools/build_interfaces.sh $(VENV) $(ROS2_SHARED)/interfaces/$$pkg || exit 1; \
	  done; \
	else echo "no $(ROS2_SHARED): launch, ros2cli and bondpy not installed (the launch and bond tests skip)"; fi
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@
	@echo "setup done: $(VENV)"

demo: setup
	$(VENV)/bin/pram-ros demo --data $(DATA)

test: setup
	$(PYTEST)

# The suite with a CPU hog (a busy loop in another process) on one of the two cores: what a
# busy CI machine does to it. It must pass all the same.
test-hog: setup
	@taskset -c 1 $(PY) -c 'while True: pass' & hog=$$!; \
	trap "kill $$hog" EXIT; \
	$(PYTEST)

clean:
	rm -rf $(VENV) $(DATA) build *.egg-info
