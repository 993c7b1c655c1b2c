"""Bridges to other attribution libraries (imported lazily: none of them is a dependency)."""
