"""Detectors of a user's own, for the --detector tests."""

from __future__ import annotations


def buggy(ctx):
    """A detector with a bug in it: it raises ImportError while running (an import it does late)."""
    import a_module_that_is_not_installed  # noqa: F401

    return []


def nothing(ctx):
    return []


NOT_A_FUNCTION = 42
