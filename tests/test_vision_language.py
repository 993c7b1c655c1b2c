"""Vision-language models (LLaVA, Qwen2-VL, Idefics3) and CLIP through explain(): relevance over pixels and tokens
together.

Tiny random configs in float64 with processors built offline (the bundled model's tokenizer with the image
tokens added, and PIL image processors). (a) CP-LRP with biases, position and class embeddings zeroed conserves:
Σ relevance of the pixels and the tokens together equals the explained value; (b) eager and SDPA attention
agree; (c) a batch equals each prompt alone; every method of the registry runs where it means something (the
token-only ones refuse the pixels); results save, load, and draw the image beside the text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

import attnlrp
from attnlrp import Answer, Explanation, GenerationExplanation, InputError, MethodError, TargetError
from attnlrp.loading import load_tokenizer
from attnlrp.methods import IntegratedGradients, available_methods
from attnlrp.tasks import ClipSimilarity, VisionLanguage, task_for

IMAGE_TOKENS = [
    "<image>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
]
#: CLIP's end-of-text token, where its text tower pools: the highest id, as in CLIP's own vocabulary.
END = "<|endoftext|>"
PROMPTS = {
    "llava": ["<image>\nWhat is in the picture? Answer:", "<image> A photo of", "<image>\nDescribe it."],
    "qwen2_vl": [
        "<|vision_start|><|image_pad|><|vision_end|>What is in the picture? Answer:",
        "<|vision_start|><|image_pad|><|vision_end|> A photo of",
        "<|vision_start|><|image_pad|><|vision_end|>Describe it.",
    ],
    "idefics3": ["<image>What is in the picture? Answer:", "<image> A photo of", "User:<image>Describe it."],
}
ARCHS = list(PROMPTS)
TOKEN_ONLY = {"attention", "attention_rollout", "occlusion"}
#: Every registered method by name; integrated gradients with few steps (it runs 32 forwards by default).
METHODS = {
    name: IntegratedGradients(steps=4) if name == "integrated_gradients" else name for name in available_methods()
}
_CONSTANTS = ("bias", "position_embedding", "class_embedding")


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


#: Images of several sizes: LLaVA's and Idefics3's processors make them 16x16, Qwen2-VL's keeps their aspect.
IMAGES = [picture(20, 28, 0), picture(24, 16, 1), picture(16, 16, 2)]


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor, which needs torchvision (absent here)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@pytest.fixture(scope="module")
def vl_tokenizer():
    """The bundled tokenizer (a fresh copy) with the image tokens of LLaVA, Qwen2-VL and Idefics3 and CLIP's
    end-of-text token added."""
    tokenizer = load_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [*IMAGE_TOKENS, END]})
    return tokenizer


def processor(arch: str, tokenizer, chat_template: str | None = None):
    if arch == "llava":
        images = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
        return LlavaProcessor(
            image_processor=images,
            tokenizer=tokenizer,
            patch_size=4,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=chat_template,
        )
    if arch == "idefics3":
        images = Idefics3ImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": 16}, max_image_size={"longest_edge": 16}
        )
        return Idefics3Processor(images, tokenizer, image_seq_len=4, chat_template=chat_template)
    images = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 64, "longest_edge": 1024}
    )
    return ImageOnlyQwen2VLProcessor(images, tokenizer, chat_template=chat_template)


_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def tiny_vlm(arch: str, tokenizer, attn: str = "sdpa", constants: bool = False):
    """A tiny random vision-language model over ``tokenizer``, float64, eval; constants zeroed unless kept."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in IMAGE_TOKENS}
    if arch == "llava":
        config = LlavaConfig(
            vision_config=dict(
                model_type="clip_vision_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=16,
                patch_size=4,
            ),
            text_config=dict(model_type="llama", vocab_size=len(tokenizer), **_TEXT),
            image_token_id=ids["<image>"],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        cls = LlavaForConditionalGeneration
    elif arch == "idefics3":
        config = Idefics3Config(
            text_config=dict(model_type="llama", vocab_size=len(tokenizer), **_TEXT),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=16,
                patch_size=4,
            ),
            scale_factor=2,
            image_token_id=ids["<image>"],
            tie_word_embeddings=False,
        )
        cls = Idefics3ForConditionalGeneration
    else:
        config = Qwen2VLConfig(
            text_config=dict(
                vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **_TEXT
            ),
            vision_config=dict(
                depth=2,
                embed_dim=32,
                hidden_size=64,
                num_heads=4,
                mlp_ratio=2,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            tie_word_embeddings=False,
        )
        cls = Qwen2VLForConditionalGeneration
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation=attn).double().eval()
    if not constants:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(key in name for key in _CONSTANTS):
                    param.zero_()
    return model


@pytest.fixture(scope="module")
def vlms(vl_tokenizer):
    """{arch: (model, processor)} with constants zeroed (CP-LRP conserves)."""
    return {arch: (tiny_vlm(arch, vl_tokenizer), processor(arch, vl_tokenizer)) for arch in ARCHS}


def _relative(exp) -> float:
    return abs(exp.total - exp.value) / abs(exp.value)


def _logits(model, proc, prompt: str, image) -> torch.Tensor:
    """The model's last logit row, run as its processor prepares the inputs."""
    encoded = proc(text=[prompt], images=[image], return_tensors="pt")
    encoded["pixel_values"] = encoded["pixel_values"].double()
    with torch.no_grad():
        return model(**encoded).logits[0, -1]


@pytest.mark.parametrize("arch", ARCHS)
def test_pixels_and_tokens_together_conserve(arch, vlms):
    model, proc = vlms[arch]
    assert task_for(model) is VisionLanguage
    exp = attnlrp.explain(model, proc, PROMPTS[arch][0], images=IMAGES[0], method="cp-lrp")
    assert _relative(exp) < 1e-6, f"{arch}: Σ R = {exp.total}, y = {exp.value}"
    logits = _logits(model, proc, PROMPTS[arch][0], IMAGES[0])
    assert exp.value == pytest.approx(float(logits.max())) and exp.target_id == int(logits.argmax())
    image, tokens = exp.image.total, float(exp.scores.sum())
    assert abs(image) > 1e-3 * abs(exp.value) and abs(tokens) > 1e-3 * abs(exp.value), "both inputs carry relevance"
    expected = (
        (16, 32) if arch == "qwen2_vl" else (16, 16)
    )  # Qwen2-VL resizes 20x28 to multiples of 8, keeping the aspect
    assert exp.image.scores.shape == expected and exp.image.image.shape == (*expected, 3)
    placeholder = model.config.image_token_id
    assert exp.token_ids.count(placeholder) == 1, "the run of image placeholders shows as one token"
    assert exp.scores[exp.token_ids.index(placeholder)] == 0, "the model writes the image over its placeholders"
    assert len(exp.tokens) == len(exp.display) == len(exp.special) == len(exp.scores)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_teacher_forced_answer_conserves(arch, vlms):
    model, proc = vlms[arch]
    exp = attnlrp.explain(model, proc, PROMPTS[arch][0], Answer(" a red cat"), images=IMAGES[0], method="cp-lrp")
    assert _relative(exp) < 1e-6 and exp.target == " a red cat"
    (prompt, a, b), (answer, c, d) = exp.segments
    assert (prompt, answer) == ("prompt", "answer") and a == 0 and b == c and d == len(exp)
    assert "".join(exp.display[c:d]) == " a red cat"
    # the answer's own tokens are apart, where they are once the image's placeholders are one token
    assert exp.context == c and exp.answer_relevance == pytest.approx(float(exp.scores[c:].sum()))
    assert max(i for _, _, i in exp.top(100)) < c


@pytest.mark.parametrize("arch", ARCHS)
def test_eager_and_sdpa_agree(arch, vl_tokenizer):
    proc = processor(arch, vl_tokenizer)
    eager, sdpa = (tiny_vlm(arch, vl_tokenizer, attn) for attn in ("eager", "sdpa"))
    for method in ("attnlrp", "cp-lrp"):
        a = attnlrp.explain(eager, proc, PROMPTS[arch][1], images=IMAGES[1], method=method)
        b = attnlrp.explain(sdpa, proc, PROMPTS[arch][1], images=IMAGES[1], method=method)
        # eager attention takes its softmax in float32: agreement to about 1e-8 of the value, not to float64's 1e-15
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(a.image.scores, b.image.scores, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_equals_each_prompt_alone(arch, vl_tokenizer):
    model, proc = tiny_vlm(arch, vl_tokenizer, constants=True), processor(arch, vl_tokenizer)
    for method in ("cp-lrp", "input_x_gradient"):
        together = attnlrp.explain(model, proc, PROMPTS[arch][:2], images=IMAGES[:2], method=method)
        for prompt, image, exp in zip(PROMPTS[arch], IMAGES, together):
            alone = attnlrp.explain(model, proc, prompt, images=image, method=method)
            np.testing.assert_allclose(exp.scores, alone.scores, rtol=1e-6, atol=1e-9, err_msg=f"{arch} {method}")
            np.testing.assert_allclose(exp.image.scores, alone.image.scores, rtol=1e-6, atol=1e-9)
            assert exp.target == alone.target and exp.value == pytest.approx(alone.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_runs_or_refuses_the_pixels(arch, vlms):
    model, proc = vlms[arch]
    for name, method in METHODS.items():
        if name in TOKEN_ONLY:
            with pytest.raises(MethodError, match="pixels"):
                attnlrp.explain(model, proc, PROMPTS[arch][2], images=IMAGES[2], method=method)
            continue
        exp = attnlrp.explain(model, proc, PROMPTS[arch][2], images=IMAGES[2], method=method)
        assert np.isfinite(exp.scores).all() and np.isfinite(exp.image.scores).all(), name
        assert np.abs(exp.image.scores).sum() > 0, f"{name} gives the pixels no relevance"
        assert exp.method == name


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_explains_each_token_over_image_and_text(arch, vlms):
    model, proc = vlms[arch]
    gen = attnlrp.explain_generation(model, proc, PROMPTS[arch][1], images=IMAGES[1], max_new_tokens=3, method="cp-lrp")
    assert isinstance(gen, GenerationExplanation) and len(gen) == 3
    assert gen.image_matrix.shape[0] == 3 and gen.image_rgb.shape == (*gen.image_matrix.shape[1:], 3)
    for i in range(3):
        step = gen.step(i)
        assert _relative(step) < 1e-6, f"step {i}: Σ R = {step.total}, y = {step.value}"
    first = attnlrp.explain(
        model, proc, PROMPTS[arch][1], target=gen.token_ids[gen.prompt_length], images=IMAGES[1], method="cp-lrp"
    )
    np.testing.assert_allclose(gen.step(0).scores, first.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gen.image_matrix[0], first.image.scores, rtol=1e-5, atol=1e-7)
    # a step knows its patch size (top_patch asked for one) and what it explained (it was empty)
    assert gen.step(0).image.top_patch() == first.image.top_patch()
    again = attnlrp.explain(
        model, proc, PROMPTS[arch][1], target=gen.step(0).explained, images=IMAGES[1], method="cp-lrp"
    )
    np.testing.assert_allclose(again.scores, first.scores, rtol=1e-6, atol=1e-9)
    plain = attnlrp.explain_generation(
        model, proc, PROMPTS[arch][1], images=IMAGES[1], max_new_tokens=2, method="gradient"
    )
    assert plain.token_ids == gen.token_ids[: len(plain.token_ids)] and plain.method == "gradient"
    assert (plain.image_matrix >= 0).all() and plain.image_matrix.sum() > 0, "saliency: unsigned, on the pixels too"


def test_results_save_load_and_draw_the_image_beside_the_text(vlms, tmp_path):
    model, proc = vlms["llava"]
    exp = attnlrp.explain(model, proc, PROMPTS["llava"][0], images=IMAGES[0], method="cp-lrp")
    loaded = Explanation.load(exp.save(tmp_path / "exp.json.gz"))
    assert loaded == exp and loaded.total == pytest.approx(exp.total) and loaded.image.image.dtype == np.uint8
    half = exp.normalized(by="sum")
    assert np.abs(half.scores).sum() + np.abs(half.image.scores).sum() == pytest.approx(1.0, rel=1e-5)
    page = exp.to_html()
    assert page.count('"src": "data:image/png;base64,') == 1 and "function beside" in page
    with_image = exp.save_figure(tmp_path / "exp.png")
    without = Explanation(exp.tokens, exp.display, exp.scores, exp.target, exp.value, exp.method).save_figure(
        tmp_path / "text.png"
    )
    assert Image.open(with_image).width > Image.open(without).width, "the image goes beside the text"
    assert "image Σ=" in repr(exp)
    gen = attnlrp.explain_generation(
        model, proc, PROMPTS["llava"][1], images=IMAGES[1], max_new_tokens=2, method="cp-lrp"
    )
    assert GenerationExplanation.load(gen.save(tmp_path / "gen.json")) == gen
    assert gen.to_html().count("data:image/png;base64,") == 2, "one image per generated token"
    rows = gen.normalized()
    assert max(np.abs(rows.matrix[0]).max(), np.abs(rows.image_matrix[0]).max()) == pytest.approx(1.0)


@pytest.mark.browser
def test_the_page_shows_the_image_beside_the_text(browser, vlms, tmp_path):
    from browsing import ARTEFACTS, errors
    from selenium.webdriver.common.by import By

    model, proc = vlms["llava"]
    exp = attnlrp.explain(model, proc, PROMPTS["llava"][0], images=IMAGES[0], method="cp-lrp")
    browser.get(exp.save_html(tmp_path / "vlm.html").as_uri())
    assert errors(browser) == []
    image = browser.find_element(By.CSS_SELECTOR, ".panel .beside figure img")
    text = browser.find_element(By.CSS_SELECTOR, ".panel .beside .text")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0, "the inline PNG loads"
    assert image.rect["x"] + image.rect["width"] <= text.rect["x"], "the image is left of the text"
    assert "image ΣR" in browser.find_element(By.CSS_SELECTOR, ".beside figcaption").text
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "vision_language.png"))

    gen = attnlrp.explain_generation(model, proc, PROMPTS["llava"][1], images=IMAGES[1], max_new_tokens=2)
    browser.get(gen.save_html(tmp_path / "gen.html").as_uri())
    first = browser.find_element(By.CSS_SELECTOR, ".beside img").get_attribute("src")
    browser.find_elements(By.CSS_SELECTOR, ".heat .gen")[1].click()
    assert browser.find_element(By.CSS_SELECTOR, ".beside img").get_attribute("src") != first, "each step its image"
    assert errors(browser) == []


def test_chat_messages_take_the_image_part(vl_tokenizer, vlms):
    model, _ = vlms["llava"]
    template = (
        "{% for m in messages %}{{ m['role'] }}: {% for part in m['content'] %}"
        "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    proc = processor("llava", vl_tokenizer, chat_template=template)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is it?"}]}]
    exp = attnlrp.explain(model, proc, chat, images=IMAGES[0], method="cp-lrp")
    text = attnlrp.explain(model, proc, "user: <image> What is it?\nassistant:", images=IMAGES[0], method="cp-lrp")
    assert exp == text and _relative(exp) < 1e-6


def test_bad_input_gets_one_clear_error(vlms, tiny_lm, tokenizer):
    model, proc = vlms["llava"]
    with pytest.raises(InputError, match=r"images= was given.*'causal-lm' task.*'vision-language'"):
        attnlrp.explain(tiny_lm, tokenizer, "The cat", images=IMAGES[0])
    with pytest.raises(InputError, match=r"images= was given.*'causal-lm' task"):
        attnlrp.explain_generation(tiny_lm, tokenizer, "The cat", images=IMAGES[0], max_new_tokens=2)
    with pytest.raises(InputError, match="give the image with images="):
        attnlrp.explain(model, proc, PROMPTS["llava"][0])
    with pytest.raises(InputError, match="give the image with images="):
        attnlrp.explain_generation(model, proc, PROMPTS["llava"][0], max_new_tokens=2)
    with pytest.raises(InputError, match="image placeholder '<image>' 0 times"):
        attnlrp.explain(model, proc, "What is it?", images=IMAGES[0])
    with pytest.raises(InputError, match="2 images were given for 3 prompts"):
        attnlrp.explain(model, proc, PROMPTS["llava"], images=IMAGES[:2])
    with pytest.raises(InputError, match="its processor"):
        attnlrp.explain(model, proc.tokenizer, PROMPTS["llava"][0], images=IMAGES[0])
    qwen, qwen_processor = vlms["qwen2_vl"]
    with pytest.raises(InputError, match=r"LlavaProcessor\) marks images with '<image>'.*pass the model's own"):
        attnlrp.explain(qwen, proc, PROMPTS["llava"][0], images=IMAGES[0])
    with pytest.raises(InputError, match=r"but LlavaForConditionalGeneration reads id"):
        attnlrp.explain(model, qwen_processor, PROMPTS["qwen2_vl"][0], images=IMAGES[0])
    with pytest.raises(InputError, match=r"Can't read the image missing\.png: No such file"):
        attnlrp.explain(model, proc, PROMPTS["llava"][0], images="missing.png")


# --- CLIP --------------------------------------------------------------------------------------------------------

#: Texts closed by the end-of-text token, where CLIP's text tower pools (CLIP's own tokenizer adds it).
TEXTS = [text + END for text in ("a photo of a cat", "two dogs playing in the snow", "a red car")]


@pytest.fixture(scope="module")
def clip_processor(vl_tokenizer):
    images = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return CLIPProcessor(image_processor=images, tokenizer=vl_tokenizer)


def tiny_clip(tokenizer, attn: str = "sdpa", constants: bool = False):
    """A tiny random CLIP whose text tower pools at the end-of-text token, float64, eval."""
    eos = tokenizer.convert_tokens_to_ids(END)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            eos_token_id=eos,
            pad_token_id=eos,
            bos_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=16,
            patch_size=4,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = CLIPModel._from_config(config, attn_implementation=attn).double().eval()
    if not constants:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(key in name for key in _CONSTANTS):
                    param.zero_()
    return model


def test_clip_similarity_conserves_and_splits_between_image_and_text(vl_tokenizer, clip_processor):
    model = tiny_clip(vl_tokenizer)
    assert task_for(model) is ClipSimilarity
    text = TEXTS[0]
    encoded = clip_processor(text=[text], images=IMAGES[0], return_tensors="pt")
    with torch.no_grad():
        logit = float(
            model(**{k: v.double() if v.is_floating_point() else v for k, v in encoded.items()}).logits_per_image
        )
        scale = float(model.logit_scale.exp())
    for similarity, expected in (("cosine", logit / scale), ("logit", logit)):
        exp = attnlrp.explain(model, clip_processor, text, images=IMAGES[0], method="cp-lrp", similarity=similarity)
        assert exp.value == pytest.approx(expected) and _relative(exp) < 1e-6
        assert exp.image.total == pytest.approx(exp.value / 2, rel=1e-6), "the image holds half (uniform rule)"
        assert float(exp.scores.sum()) == pytest.approx(exp.value / 2, rel=1e-6), "and the text the other half"
        assert exp.image.scores.shape == (16, 16) and exp.tokens[-1] == END


def test_clip_reads_image_paths_and_names_a_missing_one(vl_tokenizer, clip_processor, tmp_path):
    model = tiny_clip(vl_tokenizer)
    IMAGES[0].save(tmp_path / "cat.png")
    from_path = attnlrp.explain(model, clip_processor, TEXTS[0], images=str(tmp_path / "cat.png"))
    assert from_path.total == pytest.approx(attnlrp.explain(model, clip_processor, TEXTS[0], images=IMAGES[0]).total)
    with pytest.raises(InputError, match=r"Can't read the image .*nope\.png"):
        attnlrp.explain(model, clip_processor, TEXTS[0], images=tmp_path / "nope.png")


def test_clip_takes_the_image_forms_explain_image_takes(vl_tokenizer, clip_processor):
    # pixel values were sent through the processor again (a range error), a processor output was a TypeError
    model = tiny_clip(vl_tokenizer)
    from_pil = attnlrp.explain(model, clip_processor, TEXTS[0], images=IMAGES[0])
    pixels = clip_processor.image_processor(images=[IMAGES[0]], return_tensors="pt")["pixel_values"]
    for given in (pixels[0], pixels, [pixels[0]], clip_processor(images=[IMAGES[0]], return_tensors="pt")):
        exp = attnlrp.explain(model, clip_processor, TEXTS[0], images=given)
        assert exp.value == pytest.approx(from_pil.value, rel=1e-6)
        np.testing.assert_allclose(exp.image.scores, from_pil.image.scores, rtol=1e-6, atol=1e-12)
    two = clip_processor.image_processor(images=IMAGES[:2], return_tensors="pt")["pixel_values"]
    pair = attnlrp.explain(model, clip_processor, TEXTS[:2], images=two)
    assert pair[1].value == pytest.approx(attnlrp.explain(model, clip_processor, TEXTS[1], images=IMAGES[1]).value)
    assert len(attnlrp.explain(model, clip_processor, TEXTS[:2], images=pixels[0])) == 2, "one image for all texts"
    with pytest.raises(InputError, match="2 images were given for 3 texts"):
        attnlrp.explain(model, clip_processor, TEXTS, images=two)


def test_clip_eager_sdpa_batch_and_methods(vl_tokenizer, clip_processor):
    texts = TEXTS
    eager = attnlrp.explain(
        tiny_clip(vl_tokenizer, "eager"), clip_processor, texts[1], images=IMAGES[1], method="attnlrp"
    )
    sdpa = attnlrp.explain(
        tiny_clip(vl_tokenizer, "sdpa"), clip_processor, texts[1], images=IMAGES[1], method="attnlrp"
    )
    np.testing.assert_allclose(eager.scores, sdpa.scores, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(eager.image.scores, sdpa.image.scores, rtol=1e-6, atol=1e-9)
    model = tiny_clip(vl_tokenizer, constants=True)
    for method in ("cp-lrp", METHODS["integrated_gradients"]):
        together = attnlrp.explain(model, clip_processor, texts, images=IMAGES[0], method=method)
        assert len({round(exp.value, 12) for exp in together}) == len(texts), "each text its own similarity"
        for text, exp in zip(texts, together):
            alone = attnlrp.explain(model, clip_processor, text, images=IMAGES[0], method=method)
            np.testing.assert_allclose(exp.scores, alone.scores, rtol=1e-6, atol=1e-9, err_msg=str(method))
            np.testing.assert_allclose(exp.image.scores, alone.image.scores, rtol=1e-6, atol=1e-9, err_msg=str(method))
    for name, method in METHODS.items():
        if name in TOKEN_ONLY:
            with pytest.raises(MethodError):
                attnlrp.explain(model, clip_processor, texts[2], images=IMAGES[2], method=method)
        else:
            exp = attnlrp.explain(model, clip_processor, texts[2], images=IMAGES[2], method=method)
            assert np.isfinite(exp.scores).all() and np.isfinite(exp.image.scores).all(), name
    with pytest.raises(TargetError, match="leave target out"):
        attnlrp.explain(model, clip_processor, texts[0], target="cat", images=IMAGES[0])
    with pytest.raises(InputError, match="give the image with images="):
        attnlrp.explain(model, clip_processor, texts[0])


def test_a_dataset_line_takes_an_image_path(vlms, tmp_path):
    """The JSONL field "image" (and the CLI's --image) reach a vision-language model as images=."""
    model, proc = vlms["llava"]
    picture(40, 56, seed=3).save(tmp_path / "cat.png")
    prompt = "<image>\nWhat is in the picture? Answer:"
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"prompt": prompt, "image": str(tmp_path / "cat.png")}) + "\n", encoding="utf-8")
    attnlrp.explain_dataset(model, proc, lines, tmp_path / "out.jsonl", method="cp-lrp", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    direct = attnlrp.explain(
        model, proc, prompt, images=Image.open(tmp_path / "cat.png").convert("RGB"), method="cp-lrp"
    )
    assert record["input"]["image"].endswith("cat.png")
    assert Explanation.from_dict(record) == direct and direct.image is not None


def test_the_command_line_generates_over_an_image_and_asks_for_what_is_missing(
    vlms, vl_tokenizer, clip_processor, tmp_path, monkeypatch, capsys
):
    # generate had no --image (so no way to run a vision-language model), and explain --image without a prompt
    # crashed in the processor (a TypeError)
    from attnlrp import cli

    model, proc = vlms["llava"]
    path = tmp_path / "cat.png"
    picture(40, 56, seed=3).save(path)
    prompt = "<image>\nWhat is in the picture? Answer:"
    monkeypatch.setattr(cli, "_load", lambda args: (model, proc))
    argv = ["generate", prompt, "--image", str(path), "--max-new-tokens", "2", "--method", "cp-lrp"]
    assert cli.main([*argv, "--json", str(tmp_path / "g.json")]) == 0, capsys.readouterr().err
    direct = attnlrp.explain_generation(model, proc, prompt, images=Image.open(path), max_new_tokens=2, method="cp-lrp")
    assert GenerationExplanation.load(tmp_path / "g.json").token_ids == direct.token_ids
    clip = tiny_clip(vl_tokenizer)
    for loaded, argv, says in (
        ((model, proc), ["generate", prompt], "vision-language model: give the image, --image PATH"),
        ((model, proc), ["explain", "--image", str(path)], "explain needs a prompt"),
        ((clip, clip_processor), ["explain", "--image", str(path)], "explain needs a prompt"),
    ):
        monkeypatch.setattr(cli, "_load", lambda args, loaded=loaded: loaded)
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
