"""Data sets: the source catalog (catalog.py) and each source's module (sources/), and the generic
parts every source shares: downloads, discovery of the user's files, splits, decoding and
feature extraction, the feature stores and the compact feature files the trainer loads."""
