"""The boot tests run whole Lamina deployments as tests/e2e does: the same fixtures."""

from tests.e2e.conftest import embedded, person

__all__ = ["embedded", "person"]
