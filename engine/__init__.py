"""MOCCA engine: everything that trains (data -> models -> objective -> training -> trial -> sweep)."""

__version__ = "0.1.0"
