"""The Kubernetes backend (docs/prds/0011-kubernetes-backend.md). Only client.py imports the
`kubernetes` package, an optional extra: `pip install 'bottle[kubernetes]'`."""
