"""HTTP routes, HTTP only: each module reads the request, calls the stage that does the work and
answers. /rank (rank.py), operations (ops.py), admin (admin.py), model metadata (models.py)."""
