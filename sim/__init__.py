"""Discrete-event simulation of inference servers, stragglers, traffic and serving policies.

Knows nothing of torch: service times come in as distributions or arrays of measured times.
"""
