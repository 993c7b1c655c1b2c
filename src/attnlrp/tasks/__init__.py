"""Task adapters: each knows one job of a model family (how inputs are encoded, which inputs carry
relevance, how the model runs, how targets are read) and hands the methods a ``Batch``.

``task_for(model)`` asks the adapters in the order below and takes the first that accepts the model; the
causal LM comes last, as the fallback for plain torch modules. A new job is one adapter: subclass
``base.Task`` and ``methods.batch.Batch`` (or ``token_batch.TokenBatch`` for text).
"""

from .base import TASKS, Task, task_for
from .classification import SequenceClassification, TokenClassification, TokenLabel
from .clip import ClipSimilarity
from .embedding import Direction, SentenceSimilarity
from .image import ImageClassification
from .seq2seq import Seq2Seq
from .vision_language import VisionLanguage

# isort: split
from .causal_lm import CausalLM  # registered last: the fallback

__all__ = [
    "TASKS",
    "CausalLM",
    "ClipSimilarity",
    "Direction",
    "ImageClassification",
    "SentenceSimilarity",
    "Seq2Seq",
    "SequenceClassification",
    "Task",
    "TokenClassification",
    "TokenLabel",
    "VisionLanguage",
    "task_for",
]
