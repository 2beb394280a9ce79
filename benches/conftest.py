"""benches/ holds pytest-benchmark micro-benchmarks (run them with `pytest benches/`).

The default `pytest` run only looks in tests/ (pyproject testpaths). The load generator's
scripts, baseline servers and configs here are programs, not tests: never collect them.
"""
collect_ignore = ["load.py", "run_all.py"]
collect_ignore_glob = ["baselines/*", "configs/*", "results/*"]
