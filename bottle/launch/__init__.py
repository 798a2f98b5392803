"""Host-side launch material: what the host makes for one bottle and ships into it (the
CA, the proxy's policy file, pipelock's configuration, the launch secrets)."""
