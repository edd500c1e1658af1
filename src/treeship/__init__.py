"""treeship: release build outputs as signed OSTree commits that carry their provenance."""

__version__ = "0.1.0"
