"""Proxmox VE: the API client (the only proxmoxer user), task waits and the VM lifecycle."""
