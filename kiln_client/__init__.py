"""Kiln's command-line client: upload versions, move aliases, split traffic, run rollouts from CI."""

__version__ = "0.1.0"
