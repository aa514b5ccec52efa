"""Data sets: the source catalog (catalog.py) and each source's module (sources/); the files on
disk (io/), extraction from raw media (extraction/), the pipeline's data steps (steps/) and what
training reads (sets/)."""
