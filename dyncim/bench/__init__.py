"""Benchmarks and the GPU check: timings (`make bench`), the GPU bench, the media loaders, the
offline GPU check and the pins of what a GPU node lacks. Never part of the tests' assertions."""
