"""Posed images → textured mesh (GTR-style triplane reconstruction)."""

from .threads import set_wait_policy

__version__ = "0.1.0"

set_wait_policy()  # before anything imports torch: see backend/threads.py
