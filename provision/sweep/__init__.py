"""Sweep VM shapes for the minimum that meets a target: pure strategies, the VM loop, storage."""
