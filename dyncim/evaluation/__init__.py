"""Evaluation of trained runs: test metrics per run and the robustness sweep."""
