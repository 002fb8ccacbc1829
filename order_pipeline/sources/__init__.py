"""The source systems: how a configured source is reached, and whether it can be."""
