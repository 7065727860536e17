"""reflrp's version (a leaf module: golden files record it)."""
__version__ = "0.2.0"
