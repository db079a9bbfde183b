"""Optional libraries (extras), imported on first use, and the one error when one is missing.

The public home of these helpers for code outside ``gflow.objects`` (``gflow.models``, examples, users'
tasks): ``require("torch", "ml", "ESM-2 scoring")`` raises :class:`MissingExtra` naming the extra to
install. The implementation lives with the objects that need it first (``gflow.objects._deps``), and is
re-exported here so no other package reaches into a private module of ``gflow.objects``.
"""

from gflow.objects._deps import MissingExtra, optional, require, warn_once

__all__ = ["MissingExtra", "optional", "require", "warn_once"]
