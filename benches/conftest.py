"""benches/ holds pytest-benchmark micro-benchmarks, run by path
(e.g. `pytest benches/bench_kernels.py`), next to the load generator's programs.

The default `pytest` run only looks in tests/ (pyproject testpaths). The load generator's
scripts, baseline servers, configs and results here are programs and data, not tests:
they are never collected, even when benches/ is given to pytest.
"""
collect_ignore = ["load.py", "run_all.py", "browser_reconnect.py", "idle_memory.py", "backend_bench.py",
                  "services_bench.py", "services_app.py", "stuck_reader.py", "ab.py"]
collect_ignore_glob = ["configs/*", "results/*"]
