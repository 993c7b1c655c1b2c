"""Renderers; they take plain tokens and scores, and import nothing from the rest of attnlrp."""
