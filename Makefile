# Convenience aliases; the canonical commands are `python3 dev.py repro` and `python3 dev.py test`.
.PHONY: repro test lab env bench
repro:
	python3 dev.py repro
test:
	python3 dev.py test
lab:
	python3 dev.py lab
env:
	python3 dev.py env
bench: env
	.venv/bin/python benchmarks/bench_edm.py
