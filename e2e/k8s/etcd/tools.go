//go:build tools

// Package tools makes `go mod tidy` keep the etcd server command.
package tools

import _ "go.etcd.io/etcd/server/v3"
