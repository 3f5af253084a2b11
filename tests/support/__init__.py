"""Helpers shared by several test folders (and bench/), kept out of the shipped package."""
