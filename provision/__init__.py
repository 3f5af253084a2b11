"""labctl: find the smallest Proxmox VE VM that runs a small language model on CPU."""

__version__ = "0.1.0"
