"""Model fixtures: the tiny checkpoint, built once per test session."""
