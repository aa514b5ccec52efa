"""Data sets: download, generation, splits and the compact feature files the trainer loads."""
