"""metareg: meta-learning and multi-task learning behind one plugin registry."""

__version__ = "0.1.0"
