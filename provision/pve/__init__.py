"""Proxmox VE: the API client (client, with session, api_errors, fingerprint and redaction: the
only proxmoxer users), task waits (tasks) and the VM lifecycle (lifecycle.Lab over the stages
placement, clone, agent, boot, resize and teardown; cluster and shapes are what they share)."""
