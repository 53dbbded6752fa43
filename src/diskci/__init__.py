"""diskci: disk image CI for network-booted node platforms."""

__version__ = "0.1.0"
