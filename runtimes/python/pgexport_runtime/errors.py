"""Errors a user can cause. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class UserError(Exception):
    """A mistake in what the user asked for: bad path, bad image, bad prompt, bad option."""


class BundleError(UserError):
    """A bundle that is missing files, was tampered with, or has a schema this runtime does not know."""


class LimitError(UserError, ValueError):
    """A value outside what the runtime allows (limits.py). Also a ValueError, which Sampling used to raise."""
