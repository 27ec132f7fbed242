"""Posed images → textured mesh (GTR-style triplane reconstruction)."""

__version__ = "0.1.0"
