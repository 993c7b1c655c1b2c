"""One evaluation item: a prompt, the answer the model should give, and where the evidence for it lies."""

from __future__ import annotations

from dataclasses import dataclass

from ...tasks.targets import Contrast


@dataclass(frozen=True)
class Item:
    """A prompt with a known next token and the character spans of its evidence."""

    id: str
    prompt: str
    answer: str  # the correct continuation; its first token is the one explained
    evidence: tuple[tuple[int, int], ...]  # character spans [start, end) of the prompt
    against: str | None = None  # explain the answer's logit minus this token's, or minus the mean logit ("mean")
    top1: bool = True  # kept only if the answer is the top next token; else only if it beats ``against``
    group: str = ""  # a subgroup reported on its own (a relation, a context length)

    def answer_id(self, tokenizer) -> int:
        """The first token of the answer."""
        return tokenizer.encode(self.answer, add_special_tokens=False)[0]

    def target(self, tokenizer):
        """What ``explain`` explains for this item: the answer's logit, or its difference to ``against``."""
        answer = self.answer_id(tokenizer)
        return Contrast(answer, self.against) if self.against else answer

    def evidence_positions(self, tokenizer) -> list[int]:
        """Token positions of the prompt (as ``tokenizer(prompt)`` splits it) that overlap the evidence."""
        offsets = tokenizer(self.prompt, return_offsets_mapping=True)["offset_mapping"]
        return [i for i, (a, b) in enumerate(offsets) if any(a < end and b > start for start, end in self.evidence)]
