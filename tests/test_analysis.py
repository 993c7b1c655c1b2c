"""Results people analyse: rankings by |R|, word views that keep their tokens, frames, dataset aggregates, and
answers explained against their context."""

from __future__ import annotations

import io

import numpy as np
import pytest

import attnlrp
from attnlrp import Answer, Explanation
from attnlrp.results.explanation import frame, mean_relevance

TOKENS = ["The", " cap", "ital", " of", " France", " is"]


def example(**changes) -> Explanation:
    fields = dict(
        tokens=TOKENS,
        display=TOKENS,
        scores=np.array([-1.5, 0.5, 0.75, 0.1, 1.0, -0.2]),
        target=" Paris",
        value=1.0,
        method="attnlrp",
        token_ids=[10, 11, 12, 13, 14, 15],
    )
    return Explanation(**{**fields, **changes})


def test_top_ranks_by_magnitude_by_default():
    exp = example()
    assert [t for t, _, _ in exp.top(3)] == ["The", " France", "ital"], "|R| first: 'The' at -1.5 leads"
    assert [t for t, _, _ in exp.top(2, by="positive")] == [" France", "ital"]
    assert [t for t, _, _ in exp.top(2, by="negative")] == ["The", " is"]
    with pytest.raises(ValueError, match="by must be 'abs', 'positive' or 'negative'"):
        exp.top(by="largest")


def test_words_keep_their_tokens():
    words = example().words()
    assert words.display == ["The", " capital", " of", " France", " is"]
    assert words.token_ids == [10, 11, 12, 13, 14, 15], "the token ids stay"
    assert words.spans[1] == (1, 3) and words.token_ids[slice(*words.spans[1])] == [11, 12]
    assert words.top(1) == [("The", -1.5, 0)] and words.top(1, by="positive")[0][0] == " capital"
    table = words.to_frame()
    assert list(table["word"]) == words.display and table.loc[1, "token_id"] == [11, 12]
    assert table["score"].sum() == pytest.approx(example().total)


def test_frames_and_the_mean_over_a_dataset():
    first, second = example(), example(scores=np.array([0.0, 0.0, 0.0, 0.0, 2.0, 0.0]))
    table = first.to_frame()
    assert list(table.columns) == ["position", "token", "score", "token_id", "special", "segment", "context"]
    assert table.loc[4, "token"] == " France" and table.loc[4, "token_id"] == 14
    both = frame([first, second])
    assert len(both) == 12 and set(both["explanation"]) == {0, 1} and set(both["method"]) == {"attnlrp"}
    with pytest.raises(ValueError, match="at least one explanation"):
        frame([])
    with pytest.raises(ValueError, match=r"mix tokens and words: give each as a word view"):
        frame([first, second.words()])
    means = mean_relevance([first, second])
    assert means.index[0] == "france" and means.loc["france", "mean"] == pytest.approx(((1.0 / 1.5) + 1.0) / 2)
    assert means.loc["france", "count"] == 2 and means.loc["capital", "count"] == 2
    raw = mean_relevance([first, second], unit="token", normalize=False)
    assert raw.loc["france", "sum"] == pytest.approx(3.0) and "ital" in raw.index


def test_answers_are_ranked_and_coloured_against_their_context(tiny_lm, tokenizer):
    prompt = "The capital of France is"
    exp = attnlrp.explain(tiny_lm, tokenizer, prompt, target=Answer(" Paris, of course."), method="cp-lrp")
    n = len(tokenizer(prompt).input_ids)
    assert exp.context == n and exp.segments[-1] == ("answer", n, len(exp))
    assert all(position < n for _, _, position in exp.top(len(exp))), "rankings cover the context"
    assert len(exp.top(len(exp), scope="all")) == len(exp)
    assert exp.answer_relevance == pytest.approx(float(exp.scores[n:].sum()), rel=1e-6)
    assert exp.total == pytest.approx(exp.scores[:n].sum() + exp.answer_relevance, rel=1e-6), "conservation as ever"
    words = exp.words()
    assert words.context == next(a for name, a, _ in words.segments if name == "answer")
    assert all(position < words.context for _, _, position in words.top(20))
    item = exp._html_item()
    assert item["tokens"]["context"] == n and item["words"]["context"] == words.context
    out = io.StringIO()
    exp.show(color=False, file=out)
    assert "the answer's own tokens (Σ =" in out.getvalue()
    assert attnlrp.explain(tiny_lm, tokenizer, prompt).context is None, "a next token has no answer apart"
