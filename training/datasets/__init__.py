"""Importers of public datasets into the impression-log contract (one sub-package each)."""
