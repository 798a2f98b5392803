//go:build tools

// Package tools pins kube-router, the test node's NetworkPolicy engine.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
