"""Benchmarks: our server against a raw pass-through proxy, both in front of a fake upstream."""
