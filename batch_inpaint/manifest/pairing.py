"""Pairing images with masks by file stem, for Manifest.from_dirs / from_prefix.

Nothing is dropped silently: images without a mask, masks without an image and images that
match several masks come back in an `Unpaired` report."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.storage.uri import redact_uri

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Unpaired:
    """Files that a pairing left out, each list sorted."""

    images: list[str] = field(default_factory=list)  # images with no mask
    masks: list[str] = field(default_factory=list)  # masks with no image (or not matching)
    ambiguous: list[str] = field(default_factory=list)  # images that match several masks

    def __len__(self) -> int:
        return len(self.images) + len(self.masks) + len(self.ambiguous)

    def to_records(self) -> list[dict[str, str]]:
        return (
            [{"uri": u, "side": "image", "reason": "no mask"} for u in self.images]
            + [{"uri": u, "side": "image", "reason": "several masks"} for u in self.ambiguous]
            + [{"uri": u, "side": "mask", "reason": "no image"} for u in self.masks]
        )

    def __str__(self) -> str:
        if not len(self):
            return "every file is paired"
        lines = [
            f"{len(self.images)} images without a mask, {len(self.masks)} masks without an "
            f"image, {len(self.ambiguous)} images with several masks"
        ]
        records = self.to_records()
        lines += [
            f"  {r['side']:5}  {r['reason']:13}  {redact_uri(r['uri'])}" for r in records[:20]
        ]
        if len(records) > 20:
            lines.append(f"  ... and {len(records) - 20} more (.unpaired.to_records())")
        return "\n".join(lines)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """'{stem}_mask.png' -> a regex whose group 'stem' is the image's relative path without its
    extension; '*' matches any characters but '/' (e.g. '{stem}.*': any extension)."""
    if pattern.count("{stem}") != 1:
        raise ConfigError(f"mask pattern must contain '{{stem}}' once, got {pattern!r}")
    out = []
    for part in re.split(r"(\{stem\}|\*)", pattern):
        if part == "{stem}":
            out.append(r"(?P<stem>.+?)")
        elif part == "*":
            out.append(r"[^/]*")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _stem(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base


def _relative(uris: list[str], root: str) -> dict[str, str]:
    root = root.rstrip("/") + "/"
    return {u[len(root) :]: u for u in uris if u.startswith(root)}


def pair_files(
    images: list[str],
    image_root: str,
    masks: list[str] | None,
    mask_root: str | None,
    mask_pattern: str,
) -> tuple[list[dict[str, Any]], Unpaired]:
    """Rows {id, image, mask} for every image with exactly one mask, and what was left out.
    Ids are relative path stems ('sub/cat'); where two images share a stem ('cat.png',
    'cat.jpg') their ids keep the extension so that ids stay unique."""
    image_rel = _relative(images, image_root)
    unpaired = Unpaired()
    by_stem: dict[str, list[str]] = {}  # image stem -> mask URIs
    if masks is not None and mask_root is not None:
        regex = pattern_regex(mask_pattern)
        mask_rel = _relative(masks, mask_root)
        same_root = mask_root.rstrip("/") == image_root.rstrip("/")
        image_stems = {_stem(r) for r in image_rel}
        for rel, uri in sorted(mask_rel.items()):
            m = regex.fullmatch(rel)
            if same_root:  # masks beside the images: a mask names another file's stem
                if m is None or m.group("stem") == _stem(rel) or m.group("stem") not in image_stems:
                    continue
                image_rel.pop(rel, None)
            if m is None:
                unpaired.masks.append(uri)
            else:
                by_stem.setdefault(m.group("stem"), []).append(uri)
    stem_count: dict[str, int] = {}
    for rel in image_rel:
        stem_count[_stem(rel)] = stem_count.get(_stem(rel), 0) + 1
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for rel, uri in sorted(image_rel.items()):
        stem = _stem(rel)
        row_id = stem if stem_count[stem] == 1 else rel
        if masks is None:
            rows.append({"id": row_id, "image": uri})
            continue
        found = by_stem.get(stem, [])
        if len(found) == 1:
            rows.append({"id": row_id, "image": uri, "mask": found[0]})
            used.add(found[0])
        elif found:
            unpaired.ambiguous.append(uri)
            used.update(found)
        else:
            unpaired.images.append(uri)
    if masks is not None:
        unpaired.masks += [u for us in by_stem.values() for u in us if u not in used]
        unpaired.masks = sorted(set(unpaired.masks))
    return rows, unpaired
