"""Fleets: the device groups a release goes to (`fleets/*.yaml`: the targets their devices may be,
how long a release stays valid), and how it gets there."""
