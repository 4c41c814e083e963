"""Tests of the online service (serving/)."""
