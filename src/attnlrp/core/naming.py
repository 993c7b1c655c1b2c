"""The one spelling rule for method names, shared by the engine's rule sets and the method registry."""

from __future__ import annotations


def method_key(name: str) -> str:
    """What identifies a method name: case, spaces, ``-`` and ``_`` don't count ("CP_LRP" is "cp-lrp")."""
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")
