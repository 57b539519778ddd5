"""Test doubles for provider APIs, shared by the test-suite, the demo and the benchmarks."""
