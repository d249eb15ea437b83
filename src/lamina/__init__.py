"""Lamina: centralized image management for a fleet of endpoints."""

from __future__ import annotations

__version__ = "0.1.0"
