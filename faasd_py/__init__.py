"""faasd-py: OpenFaaS on one host, on containerd, in Python."""

__version__ = "0.1.0"
