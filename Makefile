# The two quick-start commands of the README:
#   make bench   set up, then run the benchmark CLI's quick suites (reports + charts in
#                bench-results/<suite> for householder, nn_orthogonal, spectral, sqrtm,
#                factorize, contract and sparse)
#   make test    set up, then run the test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH_OUT ?= bench-results
PRESET ?= quick

.PHONY: bench test setup-test setup-bench lint clean

setup-test:
	VENV=$(VENV) scripts/setup.sh test

setup-bench:
	VENV=$(VENV) scripts/setup.sh "test,bench"
	VENV=$(VENV) scripts/install_peers.sh

test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup-bench
	$(VENV)/bin/difflinalg bench householder --preset $(PRESET) --out $(BENCH_OUT)/householder
	$(VENV)/bin/difflinalg bench nn_orthogonal --preset $(PRESET) --out $(BENCH_OUT)/nn_orthogonal
	$(VENV)/bin/difflinalg bench spectral --preset $(PRESET) --out $(BENCH_OUT)/spectral
	$(VENV)/bin/difflinalg bench sqrtm --preset $(PRESET) --out $(BENCH_OUT)/sqrtm
	$(VENV)/bin/difflinalg bench factorize --preset $(PRESET) --out $(BENCH_OUT)/factorize
	$(VENV)/bin/difflinalg bench contract --preset $(PRESET) --out $(BENCH_OUT)/contract
	$(VENV)/bin/difflinalg bench sparse --preset $(PRESET) --out $(BENCH_OUT)/sparse

lint:
	$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) $(BENCH_OUT) build *.egg-info src/*.egg-info
