//go:build tools

// Package tools makes `go mod tidy` keep the commands the e2e suite builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
