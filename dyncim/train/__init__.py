"""The shared training loop and the per-job driver that runs it for every seed."""
