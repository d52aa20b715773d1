"""Manifests: the Arrow schemas (schema), the Manifest API to build, read, write and check them
(manifest), pairing images with masks (pairing) and row checks shared with the job (validation)."""

from batch_inpaint.manifest.manifest import Manifest

__all__ = ["Manifest"]
