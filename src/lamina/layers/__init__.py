"""Layers: path rules (rule sets as data), and later capture, compose, plan, merge."""
