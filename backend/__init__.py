"""Posed images → textured mesh (GTR-style triplane reconstruction)."""

from .threads import set_spin_count

__version__ = "0.1.0"

set_spin_count()  # before anything imports torch: see backend/threads.py
