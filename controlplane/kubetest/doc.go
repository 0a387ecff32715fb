// Package kubetest holds the end-to-end tests of `mesh control` against a
// real kube-apiserver and etcd (meshtest.StartKube) and a real Consul:
// the Kubernetes source, the merge with Consul, the VM export, the API
// server going away and the least-privilege RBAC manifest. They build
// only with the tag kube: `make test-k8s`, where a missing API server
// fails them.
package kubetest
