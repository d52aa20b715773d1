"""Shared fixtures live in plugin modules, one per area, so they can grow independently."""

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_s3", "tests.fixtures_ray"]
