# The Kubernetes test control plane (issue 3): binaries built from the pinned wrapper modules in
# hack/testbin/, and a background cluster for exploration. Included by the root Makefile, which
# defines PY, BIN and the install target. See docs/test-control-plane.md.
NODES ?= 6
# 1: a real kubelet node (containerd + runc) beside the kwok nodes (tests/support/realnode.py)
REAL_NODES ?= 0
CLUSTER_DIR ?= .cluster

.PHONY: testbin cluster cluster-down cluster-status

# build.sh decides: it hashes the pins (go.mod/go.sum of each wrapper module), itself and the Go
# version, and returns at once when testbin/.stamp matches. Fails with what to install when Go is
# missing.
testbin:
	@hack/testbin/build.sh testbin

cluster: install testbin
	$(PY) -m tests.support.cluster up --nodes $(NODES) --real-nodes $(REAL_NODES) --dir $(CLUSTER_DIR)

cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m tests.support.cluster down --dir $(CLUSTER_DIR); \
	else echo "no venv: nothing to stop"; fi

cluster-status:
	@$(PY) -m tests.support.cluster status --dir $(CLUSTER_DIR)
