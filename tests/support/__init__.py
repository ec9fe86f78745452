"""Test support code shared by the test suites.

- :mod:`tests.support.cluster`: the launcher of the real Kubernetes test control plane (etcd,
  kube-apiserver, kube-controller-manager, kube-scheduler, kwok), also ``make cluster``'s CLI.
- :mod:`tests.support.kubecluster`: the pytest plugin with its fixtures (``kube_cluster``,
  ``kube``, ``kube_namespace``, ``kube_nodes``) and wait helpers.

Nothing is imported here, so importing one module does not pull in the others.
"""
