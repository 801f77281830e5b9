"""Scenario schema, built-in scenarios, the runner that joins models/coin/sim, sweeps and the CLI."""
