# The two set-up commands of the README: `make demo` and `make test`. Both build .venv on first use.
PY := .venv/bin/python

.venv/.installed: requirements.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

.PHONY: demo test bench
demo: .venv/.installed
	$(PY) demo.py

test: .venv/.installed
	RECEIVE_NO_PROGRESS=1 $(PY) -m pytest -q

bench: .venv/.installed
	$(PY) bench/bench.py
