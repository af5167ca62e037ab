"""The site's build: scenario pages proved by this build's recordings (see pages.py)."""
