// pause is the sandbox container of the test node's pods: it holds the pod's
// namespaces, reaps zombies when the pod shares its PID namespace, and exits
// on SIGINT or SIGTERM. No registry is reachable here, so the node cannot pull
// the upstream pause image; this is built from source instead.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	go func() {
		for range children {
			for {
				var status syscall.WaitStatus
				if pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
		}
	}()
	<-stop
}
