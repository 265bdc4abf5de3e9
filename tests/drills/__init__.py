"""Fault drills: the whole stack under steady load while a dependency fails (issue 7)."""
