"""Routing: which provider and model an attempt goes to (chains.py), and the health each target's calls show,
shared by every worker through Redis (circuits.py)."""
