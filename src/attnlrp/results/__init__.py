"""Results that show, aggregate, save and load themselves: token, generation, image and audio explanations.

``base.Result`` gives every kind its tag, JSON save/load (no pickle), equality and repr; rendering goes
through ``attnlrp.render``.
"""

from .audio import AudioExplanation, AudioGenerationExplanation
from .base import Result
from .explanation import Explanation, explanations_view, save_html
from .generation import GenerationExplanation
from .image import ImageExplanation, save_image_grid

__all__ = [
    "AudioExplanation",
    "AudioGenerationExplanation",
    "Explanation",
    "GenerationExplanation",
    "ImageExplanation",
    "Result",
    "explanations_view",
    "save_html",
    "save_image_grid",
]
