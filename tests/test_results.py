"""Explanation / GenerationExplanation without a model: save/load, words, normalisation, rendering."""

from __future__ import annotations

import gzip
import io
import json
import re

import numpy as np
import pytest

from attnlrp import Explanation, GenerationExplanation, ResultFileError
from attnlrp.results.tokens import clean_tokens, group_words

ANSI = "\x1b["


def explanation(**changes) -> Explanation:
    raw = ["<|im_start|>", "The", "Ġcap", "ital", "Ġof", "ĠFr", "ance", "ĠcafÃ©", "Ċ", "æĹ¥æľ¬"]
    special = [t == "<|im_start|>" for t in raw]
    fields = dict(
        tokens=raw,
        display=clean_tokens(raw, frozenset({"<|im_start|>"})),
        scores=np.array([0.0, 0.5, 1.25, -0.75, 0.125, 2.0, 0.3, -0.1, 0.0, 1e-8], dtype=np.float32),
        target=" Paris",
        value=3.5,
        method="attnlrp",
        model="tiny",
        token_ids=list(range(10, 20)),
        special=special,
        target_id=7042,
        logit=3.5,
        prob=0.25,
        segments=[("0:user", 0, 7), ("generation prompt", 7, 10)],
    )
    fields.update(changes)
    return Explanation(**fields)


def generation() -> GenerationExplanation:
    raw = ["The", "Ġcap", "ital", "Ġis", "ĠPar", "is", "."]
    matrix = np.zeros((3, 7), dtype=np.float32)
    matrix[0, :4] = [0.5, 1.0, -0.25, 2.0]
    matrix[1, :5] = [0.1, 0.2, 0.3, 0.4, 3.0]
    matrix[2, :6] = [-1.0, 0.0, 0.5, 0.25, 1.0, 1.5]
    return GenerationExplanation(
        tokens=raw,
        display=clean_tokens(raw),
        matrix=matrix,
        prompt_length=4,
        values=[2.5, 3.0, 1.25],
        method="cp-lrp",
        model="tiny",
        token_ids=[1, 2, 3, 4, 5, 6, 7],
        probs=[0.5, 0.75, 0.125],
    )


# --- save / load --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exp.json", "exp.json.gz"])
def test_explanation_round_trip_is_exact(tmp_path, name):
    exp = explanation()
    path = exp.save(tmp_path / name)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b", "a .gz name must give a gzip file"
    loaded = Explanation.load(path)
    assert loaded == exp
    assert loaded.scores.dtype == np.float32
    np.testing.assert_array_equal(loaded.scores, exp.scores)
    assert loaded.segments == exp.segments and loaded.display == exp.display
    # the word view (another unit) round-trips too
    words = exp.words()
    assert Explanation.load(words.save(tmp_path / ("w" + name))) == words
    # into a folder that isn't there yet: it is made
    assert Explanation.load(exp.save(tmp_path / "new" / "deeper" / name)) == exp
    assert exp.save_html(tmp_path / "new" / "html" / "exp.html").is_file()


@pytest.mark.parametrize("name", ["gen.json", "gen.json.gz"])
def test_generation_round_trip_is_exact(tmp_path, name):
    gen = generation()
    loaded = GenerationExplanation.load(gen.save(tmp_path / name))
    assert loaded == gen
    np.testing.assert_array_equal(loaded.matrix, gen.matrix)
    assert loaded.matrix.shape == (3, 7)


def test_equality_notices_a_changed_score():
    a, b = explanation(), explanation()
    assert a == b
    b.scores[3] += 1e-6
    assert a != b


def test_loading_a_non_json_file_raises_a_clear_error(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("these are not results {", encoding="utf-8")
    with pytest.raises(ResultFileError, match=r"Can't read .*notes\.json as an attnlrp explanation JSON file"):
        Explanation.load(path)
    binary = tmp_path / "image.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ResultFileError, match="Can't read"):
        Explanation.load(binary)
    fake_gz = tmp_path / "exp.json.gz"
    fake_gz.write_text("{}", encoding="utf-8")
    with pytest.raises(ResultFileError, match="Can't read"):
        Explanation.load(fake_gz)
    with pytest.raises(ResultFileError, match="Can't read"):
        GenerationExplanation.load(tmp_path / "missing.json")


def test_loading_foreign_json_raises_a_clear_error(tmp_path):
    foreign = tmp_path / "package.json"
    foreign.write_text(json.dumps({"name": "left-pad", "version": "1.0"}), encoding="utf-8")
    with pytest.raises(
        ResultFileError, match=r"package\.json is not an attnlrp explanation file.*Explanation\.save\(\)"
    ):
        Explanation.load(foreign)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(ResultFileError, match="found 'list'"):
        GenerationExplanation.load(listing)
    # the other kind of result: said so, with the class that wrote it
    gen_file = generation().save(tmp_path / "gen.json")
    with pytest.raises(ResultFileError, match="found 'generation'"):
        Explanation.load(gen_file)
    exp_file = explanation().save(tmp_path / "exp.json.gz")
    with pytest.raises(ResultFileError, match=r"not an attnlrp generation file.*read it with Explanation\.load\(\)"):
        GenerationExplanation.load(exp_file)


def test_loading_a_newer_format_asks_for_an_upgrade(tmp_path):
    data = explanation().to_dict()
    data["version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ResultFileError, match="newer attnlrp.*upgrade"):
        Explanation.load(path)


# --- words --------------------------------------------------------------------------------------

#: raw tokens, special tokens, the expected words, and which tokens make each word
WORD_CASES = {
    "byte-bpe": (
        ["The", "Ġcap", "ital", "Ġof", "ĠFr", "ance", ",", "ĠcafÃ©", "s", "Ċ", "Done"],
        set(),
        ["The", " capital", " of", " France", ",", " cafés", "\n", "Done"],
        [[0], [1, 2], [3], [4, 5], [6], [7, 8], [9], [10]],
    ),
    "sentencepiece": (
        ["<s>", "▁The", "▁cap", "ital", "▁of", "▁Fr", "ance", ",", "▁it", "'", "s"],
        {"<s>"},
        ["<s>", " The", " capital", " of", " France", ",", " it", "'", "s"],
        [[0], [1], [2, 3], [4], [5, 6], [7], [8], [9], [10]],
    ),
    "wordpiece": (
        ["[CLS]", "the", "cap", "##ital", "of", "fr", "##ance", "[SEP]"],
        {"[CLS]", "[SEP]"},
        ["[CLS]", " the", " capital", " of", " france", "[SEP]"],
        [[0], [1], [2, 3], [4], [5, 6], [7]],
    ),
    "byte-fallback": (
        ["▁The", "▁caf", "<0xC3>", "<0xA9>", "▁is", "<0x0A>", "▁open", "<0x21>"],
        set(),
        None,  # the non-ASCII word is checked by its pieces below
        [[0], [1, 2, 3], [4], [5], [6], [7]],
    ),
}


@pytest.mark.parametrize("case", sorted(WORD_CASES))
def test_words_merge_subword_tokens_and_sum_their_scores(case):
    raw, specials, expected, groups = WORD_CASES[case]
    display = clean_tokens(raw, frozenset(specials))
    scores = np.arange(1, len(raw) + 1, dtype=np.float32) * np.where(np.arange(len(raw)) % 3 == 0, -1, 1)
    exp = Explanation(
        tokens=raw,
        display=display,
        scores=scores,
        target="x",
        value=1.0,
        method="attnlrp",
        special=[t in specials for t in raw],
        segments=[("all", 0, len(raw))],
    )

    words = exp.words()

    assert words.unit == "word" and len(words) == len(groups)
    if expected is not None:
        assert words.display == expected
    assert words.display == ["".join(display[i] for i in g) for g in groups]
    np.testing.assert_allclose(words.scores, [scores[g].sum() for g in groups], rtol=1e-6)
    assert words.total == pytest.approx(exp.total, rel=1e-6)
    assert words.special == [raw[g[0]] in specials for g in groups]
    assert words.segments == [("all", 0, len(groups))]
    assert words.words() is words
    assert "word" in repr(words)


def test_words_never_cross_a_segment_or_the_answer():
    # the answer starts inside a word (" Fr" | "ance"), and a segment inside another (" cap" | "ital")
    exp = explanation(context=6, segments=[("prompt", 0, 3), ("rest", 3, 6), ("answer", 6, 10)])
    words = exp.words()
    assert words.display[:6] == ["<|im_start|>", "The", " cap", "ital", " of", " Fr"] and words.display[6] == "ance"
    assert words.context == 6 and words.answer_relevance == pytest.approx(exp.answer_relevance)
    assert words.segment_scores() == pytest.approx(exp.segment_scores())
    assert max(i for _, _, i in words.top(100)) < words.context


def test_byte_fallback_tokens_display_as_text():
    display = clean_tokens(["▁a", "<0x0A>", "<0x21>", "▁b"])
    assert display == [" a", "\n", "!", " b"]
    # a character over several byte tokens is shown by its first; a byte left unfinished is a replacement mark
    assert clean_tokens(["▁a", "<0xE6>", "<0x97>", "<0xA5>", "▁b", "<0xE6>"]) == [" a", "日", "", "", " b", "\ufffd"]
    # an unfinished character before another byte token: its mark stays with it, the next token keeps its own text
    assert clean_tokens(["Ã", "Ġhi"], scheme="bytelevel") == ["\ufffd", " hi"]


@pytest.mark.parametrize(
    "text",
    ["I ❤️ 🐍 and 日本語", "東京は日本の首都です。" * 4, "Family: 👨‍👩‍👧 ok", "café naïve", "x\u0301y", "देवनागरी लिपि"],
)
def test_characters_split_over_byte_level_tokens_join_into_the_text_and_into_words(tokenizer, text):
    from attnlrp.tasks.text import display_tokens

    ids = tokenizer(text).input_ids
    _, display, special = display_tokens(tokenizer, ids)
    assert "".join(display) == text  # nothing dropped, no escapes, at any length (the 76-token prompt too)
    words, _, summed, _ = group_words(display, special, np.ones(len(display)))
    assert "".join(words) == text and summed.sum() == len(display)
    assert all(word.strip() for word in words)  # no word is only the rest of a character


def test_a_ranking_names_tokens_that_hold_the_rest_of_a_character(tokenizer):
    from attnlrp.tasks.text import display_tokens

    ids = tokenizer("北京 and 🍕 pizza")["input_ids"]
    raw, display, special = display_tokens(tokenizer, ids)
    scores = np.arange(len(ids), 0, -1, dtype=np.float32)  # the first tokens rank first
    exp = Explanation(tokens=raw, display=display, scores=scores, target="x", value=1.0, method="m", special=special)
    ranked = [text for text, _, _ in exp.top(len(ids))]
    assert "" not in ranked, "the rest of 北 was listed as an empty string"
    assert ranked[:2] == ["北", "(rest of '北')"] and "(rest of '🍕')" in ranked


def test_words_keep_emoji_and_scripts_without_spaces_whole(tokenizer):
    from attnlrp.tasks.text import display_tokens

    _, display, special = display_tokens(tokenizer, tokenizer("I ❤️ 🐍 and 日本語, Family: 👨‍👩‍👧").input_ids)
    words = group_words(display, special, np.ones(len(display)))[0]
    assert words == ["I", " ❤️", " 🐍", " and", " 日本語", ",", " Family", ":", " 👨‍👩‍👧"]
    _, display, special = display_tokens(tokenizer, tokenizer("देवनागरी लिपि, x\u0301y").input_ids)
    assert group_words(display, special, np.ones(len(display)))[0] == ["देवनागरी", " लिपि", ",", " x\u0301y"]


def test_generation_words_merge_the_prompt_and_keep_one_row_per_generated_token():
    gen = generation()
    words = gen.words()
    # the prompt ["The", " capital", " is"] (tokens 1+2 merge); the generated " Par", "is", "." stay tokens: each is
    # a row, and a column of the rows after it
    assert words.display == ["The", " capital", " is", " Par", "is", "."]
    assert words.matrix.shape == (3, 6) and words.prompt_length == 3
    np.testing.assert_allclose(words.matrix[:, 1], gen.matrix[:, 1] + gen.matrix[:, 2])
    np.testing.assert_allclose(words.matrix[:, 3:], gen.matrix[:, 4:])
    np.testing.assert_allclose(words.matrix.sum(1), gen.matrix.sum(1), rtol=1e-6)
    assert words.generated == gen.generated
    assert [words.step(i).target for i in range(3)] == [gen.step(i).target for i in range(3)]
    assert [words.step(i).target_id for i in range(3)] == gen.token_ids[-3:] and words.token_ids == gen.token_ids
    assert [s.total for s in map(words.step, range(3))] == pytest.approx([s.total for s in map(gen.step, range(3))])
    assert len(words.top(2)) == 3


def test_generation_step_counts_from_the_end_like_a_list_and_refuses_other_steps():
    gen = generation()
    last = gen.step(-1)
    assert last.to_dict() == gen.step(2).to_dict() and last.target_id == gen.token_ids[-1]
    for bad in (3, -4, 1.0, True):
        with pytest.raises(IndexError, match=r"give 0\.\.2, or -1 for the last"):
            gen.step(bad)


# --- normalised, top, repr ----------------------------------------------------------------------


def test_normalized_by_max_and_by_sum():
    exp = explanation(scores=np.array([1, -4, 2, 0, 0, 0, 0, 0, 0, 1], dtype=np.float32))
    by_max, by_sum = exp.normalized(), exp.normalized("sum")
    np.testing.assert_allclose(by_max.scores[:3], [0.25, -1.0, 0.5])
    assert np.abs(by_max.scores).max() == pytest.approx(1.0)
    assert np.abs(by_sum.scores).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(by_sum.scores[:3], np.array([1, -4, 2]) / 8)
    assert exp.scores[1] == -4, "the original is untouched"
    zero = explanation(scores=np.zeros(10, dtype=np.float32)).normalized()
    assert not zero.scores.any() and np.isfinite(zero.scores).all()
    with pytest.raises(ValueError, match="'max' or 'sum'"):
        exp.normalized("mean")


def test_generation_normalized_per_row():
    rows = generation().normalized().matrix
    np.testing.assert_allclose(np.abs(rows).max(1), 1.0)
    np.testing.assert_allclose(rows[0, :4], [0.25, 0.5, -0.125, 1.0])
    sums = generation().normalized("sum").matrix
    np.testing.assert_allclose(np.abs(sums).sum(1), 1.0, rtol=1e-6)


def test_top_k_orders_by_score():
    exp = explanation()
    top = exp.top(3, by="positive")
    assert top == [(" Fr", 2.0, 5), (" cap", 1.25, 2), ("The", 0.5, 1)]
    # a sign's ranking holds only tokens of that sign: fewer than k where fewer have it
    positive, negative = exp.top(100, by="positive"), exp.top(100, by="negative")
    assert len(positive) == int((exp.scores > 0).sum()) and all(score > 0 for _, score, _ in positive)
    assert [s for _, s, _ in negative] == sorted(exp.scores[exp.scores < 0].tolist())
    gen_top = generation().top(2)
    assert [row[0][2] for row in gen_top] == [3, 4, 5]
    assert exp.top(0) == []
    for k in (-3, 2.5, True):
        with pytest.raises(ValueError, match="a whole number >= 0"):
            exp.top(k)
    with pytest.raises(ValueError, match="a whole number >= 0"):
        generation().top(-1)


def test_repr_is_readable():
    text = repr(explanation())
    assert text.startswith("Explanation(attnlrp, target=' Paris', y=3.5, 10 tokens, top: ")
    assert "' Fr': +2" in text and "\n" not in text
    gen = repr(generation())
    assert gen == "GenerationExplanation(cp-lrp, 3 generated tokens ' Paris.', prompt 4 tokens)"


# --- terminal -----------------------------------------------------------------------------------


def test_show_plain_text_has_tokens_and_no_ansi():
    out = io.StringIO()
    explanation().show(color=False, file=out)
    text = out.getvalue()
    assert ANSI not in text
    for token in ["The", "cap", "ital", "Fr", "ance", "café", "日本"]:
        assert token in text
    assert "' Paris'" in text and "y = 3.5" in text
    assert "[+1.00]" in text, "the top token's scaled score is printed where colour is off"


def test_show_in_colour_uses_ansi_escapes():
    out = io.StringIO()
    explanation().show(color=True, file=out)
    text = out.getvalue()
    assert ANSI in text
    assert "legend" in text and "ital" in text


def test_generation_show_prints_every_step():
    out = io.StringIO()
    generation().show(color=False, file=out)
    text = out.getvalue()
    assert ANSI not in text
    assert "step 0: ' Par'" in text and "step 2: '.'" in text


# --- HTML ---------------------------------------------------------------------------------------


def _data(page: str) -> dict:
    match = re.search(r'<script class="attnlrp-data" type="application/json">(.*?)</script>', page, re.S)
    assert match, "the page carries its data inline"
    return json.loads(match.group(1))


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "no external resources"
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script>" in page and "<style>" in page


def test_explanation_html_is_self_contained_and_holds_the_data(tmp_path):
    hostile = "<!--<script></script><script>alert(1)</script>"
    exp = explanation(target="<b>Paris</b>", display=explanation().display[:-1] + [hostile])
    page = exp.to_html()
    _assert_self_contained(page)
    assert "alert(1)" in page and "<script>alert(1)" not in page and "<!--" not in page, (
        "token text must not be able to end (or escape) the data block"
    )
    assert "&lt;b&gt;Paris&lt;/b&gt;" in page.split("</title>")[0]
    data = _data(page)
    (item,) = data["items"]
    assert item["tokens"]["text"] == exp.display
    assert item["tokens"]["scores"] == [float(s) for s in exp.scores]
    assert item["words"]["text"] == exp.words().display
    assert item["target"] == "<b>Paris</b>" and item["value"] == 3.5
    path = exp.save_html(tmp_path / "exp.html")
    assert path.read_text(encoding="utf-8") == page
    assert exp._repr_html_() in page


def test_generation_html_is_self_contained_and_holds_the_data(tmp_path):
    gen = generation()
    page = gen.to_html()
    _assert_self_contained(page)
    data = _data(page)
    assert data["kind"] == "generation"
    assert data["generated"] == [" Par", "is", "."]
    assert data["tokens"]["matrix"] == gen.matrix.tolist()
    assert data["tokens"]["prompt_length"] == 4
    assert data["words"]["text"] == gen.words().display
    assert gen.save_html(tmp_path / "gen.html").read_text(encoding="utf-8") == page


def test_gzip_file_is_plain_json_inside(tmp_path):
    path = explanation().save(tmp_path / "e.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        payload = json.load(f)
    assert payload["format"] == "attnlrp" and payload["kind"] == "explanation"
    assert payload["display"][-1] == "日本"


def test_save_html_takes_a_batch_list_and_refuses_other_results_with_the_fix(tmp_path):
    import attnlrp

    first, second = explanation(), explanation(method="cp-lrp")
    from_list = attnlrp.save_html(tmp_path / "list.html", [first, second]).read_text(encoding="utf-8")
    assert from_list == attnlrp.save_html(tmp_path / "args.html", first, second).read_text(encoding="utf-8")
    with pytest.raises(TypeError, match=r"\(got GenerationExplanation\): call its own \.save_html\(path\)"):
        attnlrp.save_html(tmp_path / "g.html", generation())
    with pytest.raises(TypeError, match=r"save_image_grid lays out ImageExplanations \(got Explanation\)"):
        attnlrp.save_image_grid(tmp_path / "x.png", [first])


def test_a_damaged_file_or_lengths_that_dont_fit_are_refused_and_nan_renders(tmp_path):
    exp = explanation()
    data = exp.to_dict()
    for broken, says in [
        ({k: v for k, v in data.items() if k != "display"}, "missing 1 required positional argument: 'display'"),
        ({**data, "scores": data["scores"][:-2]}, "got lengths"),
    ]:
        (tmp_path / "x.json").write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(
            ResultFileError, match=rf"x\.json is a damaged attnlrp explanation file: .*{re.escape(says)}"
        ):
            Explanation.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="one score, display string and special flag per token"):
        Explanation(tokens=["a", "b"], display=["a"], scores=[1.0, 2.0], target="x", value=1.0, method="m", model="m")
    nan = explanation()
    nan.scores[1] = np.nan
    out = io.StringIO()
    nan.show(color=True, file=out)
    assert nan.display[1] in out.getvalue()
    page = nan.html_view()
    assert "NaN" not in page and "null" in page  # JSON has no NaN: a page with one would be blank
