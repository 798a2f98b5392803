"""Backends turn a BottlePlan into running resources; bottle/cli.py picks one (`--backend`)."""

BACKENDS = ("docker", "kubernetes")
