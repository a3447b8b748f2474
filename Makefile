# Two commands for a newcomer (README):
#   make demo   set up, build the demo model and data, train it on this machine (no SLURM needed)
#   make test   set up everything (packages, .venv, the local 2-node SLURM cluster) and run all tests
.PHONY: demo test setup cluster lint unit ops

# DeepSpeed JIT-compiles its C++ ops on first use (minutes on 2 cores): keep them in one persistent
# cache, shared by every run of the test command and the jobs it submits (SLURM jobs inherit the
# environment), keyed below this root by DeepSpeed/torch/Python version and CPU like any runs directory's.
export HPCFT_OPS_CACHE ?= $(HOME)/.cache/hpcft/torch_extensions

setup:
	bash scripts/setup --system

demo: setup
	@[ -f demo/job.yaml ] || .venv/bin/hpcft init-demo demo
	.venv/bin/hpcft submit demo/job.yaml --backend local --wait

cluster:
	bash scripts/dev-cluster up

lint:
	.venv/bin/ruff check hpcft tests benchmarks
	.venv/bin/ruff format --check hpcft tests benchmarks

# Build the ops once, serially, before parallel ranks and tests would race for them.
ops: setup
	.venv/bin/hpcft ops build

unit: setup
	.venv/bin/pytest -q tests/unit

# Three lanes (tests/conftest.py): the tests of each of the lab's three clusters in order in one, then the unit and train tests.
test: setup cluster lint ops
	.venv/bin/pytest -v -n 3 --timeout=900 --durations=30 tests
