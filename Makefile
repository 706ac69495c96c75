# Two commands do everything on a fresh machine (Python 3.11):
#   make demo   install, synthetic CT-RATE, SFT, GRPO, exports and test-split reports on the embedded default
#   make test   install, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs

.PHONY: install demo test lint clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) cli.py fit --config configs/sft.yaml
	$(PY) cli.py export --config configs/sft.yaml --ckpt_path best --out_dir artifacts/sft-model
	$(PY) cli.py test --config configs/sft.yaml --config configs/eval_export.yaml
	$(PY) cli.py validate --config configs/grpo.yaml
	$(PY) cli.py fit --config configs/grpo.yaml
	$(PY) cli.py export --config configs/grpo.yaml --ckpt_path best --out_dir artifacts/grpo-model
	$(PY) cli.py test --config configs/grpo.yaml --config configs/eval_grpo_export.yaml

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf data runs artifacts
