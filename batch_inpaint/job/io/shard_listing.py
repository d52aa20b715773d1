"""Moved to manifest/shard_listing.py (the Manifest API lists shards too, and manifest/ may not
import the job); this name stays until the job's imports move."""

from batch_inpaint.manifest.shard_listing import (  # noqa: F401
    SHARD_SUFFIXES,
    Shard,
    expand,
    is_pattern,
    list_shards,
    shard_root,
)
