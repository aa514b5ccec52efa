"""Reporting: the summary tables and DVC metrics, REPORT.md, the figures, the paired tests, the
field's ranks and the sanity ranges."""
