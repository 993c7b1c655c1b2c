"""What does the model's answer rest on? A question about a short passage, explained with AttnLRP.

Run with `make demo` (or `python examples/demo.py`). Uses the bundled SmolLM2-135M-Instruct;
the first run converts it once (tens of seconds), later runs load it from the cache.
"""

from pathlib import Path

import attnlrp

PASSAGE = (
    "Brindlemoor is a small village on the eastern shore of Lake Orvant. It is known for its blue clay "
    "pottery, and every autumn it hosts the Lantern Fair. The oldest building in the village is a stone "
    "mill built in 1642."
)
QUESTION = "What does Brindlemoor host every autumn?"
ANSWER = "The Lantern Fair"  # what the model answers (greedy), explained as a whole span

model, tokenizer = attnlrp.load_model()
messages = [{"role": "user", "content": f"{PASSAGE}\n\nQuestion: {QUESTION} Answer in a few words."}]
exp = attnlrp.explain(model, tokenizer, messages, target=attnlrp.Answer(ANSWER))

print(repr(exp), "\n")
exp.show()  # tokens, coloured by relevance (plain text with scores where there is no colour)
print()
words = exp.words()
words.show()  # the same, merged into words
print("\nmost relevant words of the context (by |relevance|; the answer's own words are ranked apart):")
for word, score, _ in words.top(5):
    print(f"  {word!r:>16}  {score:+.3f}")
print(f"the answer's own tokens hold {exp.answer_relevance:+.3f} of Σ relevance {exp.total:+.3f}")
print("\nrelevance per part of the chat:", {k: round(v, 2) for k, v in exp.segment_scores().items()})

path = exp.save_html(Path("demo.html"))
print(f"\nwrote {path.resolve()} (self-contained; open it in a browser)")
