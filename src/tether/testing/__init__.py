"""Helpers for testing code that uses tether, without sleeping and without a network."""

from tether.testing.clock import VirtualClock

__all__ = ["VirtualClock"]
