//go:build tools

// Package tools pins the etcd server that the test node's API server stores its state in.
package tools

import _ "go.etcd.io/etcd/server/v3"
