"""Data sets, networks, training of the base model and its experts, the checkpoint cache, profiling."""
