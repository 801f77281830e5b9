"""Coding over networks: COIN and its baselines, decoding, normalized decoding accuracy."""
