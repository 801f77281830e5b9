"""Figures and the self-contained HTML report, rendered from result files only."""
