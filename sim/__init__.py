"""The simulated platform: a ground-truth world, its impression logs and an HTTP traffic driver.

Not training: the demo, the benchmarks and the tests use it to stand in for real users. Imports
nothing above `ranker` (tests/test_boundaries.py holds it to that).
"""
