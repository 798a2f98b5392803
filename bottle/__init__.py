"""bottle: run an autonomous coding agent behind a decrypting, policy-enforcing egress proxy."""

__version__ = "0.1.0"
