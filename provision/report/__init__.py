"""Sweep reports: terminal table, CSV, JSON, PNG plot, HTML and markdown from one SweepReport."""
