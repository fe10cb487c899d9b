"""The training-throughput benchmark: run it as `python -m tools.benchmark` (see
__main__.py for what it measures and its flags).

harness.py holds the flags, the timing and memory primitives and the worker
processes; each other module is one measurement, named after what it compares;
report.py writes the markdown table. The fixtures (runtime, synthetic data,
ticket-like models) are tools/fixtures.py, shared with tools/gpu_check.py.
"""
