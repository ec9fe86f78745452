# Packaging (issue 5): the Helm chart, the plain manifests rendered from it, the container image
# and checkov. Included by the root Makefile, which defines PY, BIN and the install/testbin
# targets. tests/packaging/ runs each of these checks inside `make test`; the targets are for
# working on them by hand. See docs/deploy.md.
HELM          ?= testbin/helm
IMAGE         ?= localhost/rebootcoord:dev
BASE_IMAGE    ?= localhost/rebootcoord-base:bookworm
# A CA bundle that pip inside the build trusts (a build secret, never in a layer): the host's,
# which also holds the CA of a TLS-inspecting proxy if the machine sits behind one.
CA_BUNDLE     ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
# checkov talks to no one: no policy download from its vendor's platform, no update check.
CHECKOV_ENV   := CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE PATH=$(CURDIR)/testbin:$$PATH
CHECKOV       := $(CHECKOV_ENV) $(CHECKOV_VENV)/bin/checkov --skip-download --compact --quiet

comma := ,

.PHONY: packaging chart-schema chart-lint deploy-manifests image-base image checkov

packaging: chart-lint checkov image

# values.schema.json and the chart README's key table, from the agent's own schema.
chart-schema: install
	$(PY) hack/gen_chart_schema.py

chart-lint: testbin
	$(HELM) lint --strict charts/rebootcoord
	$(HELM) lint --strict charts/rebootcoord --set config.reboot_method=signal \
	    --set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set dashboard.enabled=true

deploy-manifests: testbin
	HELM=$(HELM) deploy/render.sh

# The base image, debootstrapped from Debian packages (no registry here); skipped when current.
image-base:
	hack/image/build-base.sh $(BASE_IMAGE)

# chroot isolation: no daemon, no user namespaces or cgroups needed (this sandbox has neither).
image: image-base
	podman build --isolation chroot --layers \
	    --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    $(if $(CA_BUNDLE),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
	    --tag $(IMAGE) .


# checkov in a venv of its own: its many pinned dependencies stay out of the project's.
$(CHECKOV_VENV)/.installed: hack/packaging.mk
	$(PYTHON) -m venv $(CHECKOV_VENV)
	echo '*' >$(CHECKOV_VENV)/.gitignore
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

# Skips that are not inline (each inline one carries its reason where it applies):
#   CKV_K8S_21 (helm scan only): the chart puts every object in the release namespace, and
#     checkov renders the chart without one ("default"); the deploy/ scan checks the rule.
checkov: $(CHECKOV_VENV)/.installed testbin
	$(CHECKOV) --framework helm -d charts/rebootcoord --skip-check CKV_K8S_21
	$(CHECKOV) --framework kubernetes -d deploy
	$(CHECKOV) --framework dockerfile -f Dockerfile

# The bundle for hosts without Kubernetes (docs/hosts.md): the wheels of rebootcoord and of its
# dependencies for this Python and machine, the systemd units, the example configs and
# deploy/systemd/install.sh, as $(SYSTEMD_DIST)/rebootcoord-<version>-systemd-<cpXY>-<arch>.tar.gz.
# The dependencies' wheels come from PyPI (or pip's cache and PIP_FIND_LINKS). The hosts' Python
# may differ from ours: SYSTEMD_PYTHON=python3.12 builds wheels for 3.12 (that Python needs pip).
SYSTEMD_DIST   ?= dist
SYSTEMD_PYTHON ?= $(PY)
.PHONY: systemd-bundle
systemd-bundle: install
	PYTHON=$(SYSTEMD_PYTHON) hack/systemd/build-bundle.sh $(SYSTEMD_DIST)
