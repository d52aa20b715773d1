"""Rows in and rows out."""
