"""Results that show, aggregate, save and load themselves: token, generation and image explanations.

``base.Result`` gives every kind its tag, JSON save/load (no pickle), equality and repr; rendering goes
through ``attnlrp.render``.
"""

from .base import Result
from .explanation import Explanation, explanations_view, save_html
from .generation import GenerationExplanation
from .image import ImageExplanation, save_image_grid

__all__ = [
    "Explanation",
    "GenerationExplanation",
    "ImageExplanation",
    "Result",
    "explanations_view",
    "save_html",
    "save_image_grid",
]
