module bottle.example/k8s-node/pause

go 1.24.0
