"""Fleets: the devices a release goes to, and how it gets there."""
