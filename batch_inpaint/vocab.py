"""The project's vocabulary in one place: a result row's status, an error row's kind (in two
families: bad input, redone only on request; transient infrastructure, redone by default) and
the exit statuses every entry point shares. The values are what lands in result rows, run.json
and the docs; they are plain strings and ints so tables and JSON need no conversion."""

from __future__ import annotations

from enum import Enum, IntEnum


class Status(str, Enum):
    """Values of the result table's `status` column (`pending` lives only inside the job)."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # nothing to do (an empty mask): the output is the input
    PENDING = "pending"  # prepared, waiting for the model

    def __str__(self) -> str:
        return self.value


DONE = (Status.OK.value, Status.SKIPPED.value)  # statuses of a finished row with an output
FINAL = (*DONE, Status.ERROR.value)  # statuses a result row may have


class ErrorKind(str, Enum):
    """Values of the result table's `error_kind` column and of validation problems, each with
    the one-line description the report prints beside it (`.description`)."""

    description: str

    def __new__(cls, value: str, description: str) -> ErrorKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    # the row itself: its id, URIs, values or mask
    MISSING_ID = "missing_id", "the row has no id"
    DUPLICATE_ID = "duplicate_id", "the id appears more than once in the manifest"
    MISSING_IMAGE = "missing_image", "the row gives no image URI"
    NO_MASK = "no_mask", "the row gives no mask column and no queries to detect one"
    MASK = "mask", "the mask could not be built (wrong size, unreadable)"
    BAD_BOX = "bad_box", "a mask box is not [x0, y0, x1, y1]"
    BAD_POLYGON = "bad_polygon", "a mask polygon has fewer than 3 points"
    NO_ALPHA = "no_alpha", "mask_from_alpha is set but the image has no alpha channel"
    BAD_VALUE = "bad_value", "a per-row override column holds a value the job refuses"
    SIZE_MISMATCH = "size_mismatch", "the mask's size differs from the image's"
    URI_REJECTED = "uri_rejected", "the URI is not allowed (scheme, bucket or http policy)"
    # the objects the row names
    NOT_FOUND = "not_found", "the image or mask does not exist at its URI"
    ACCESS_DENIED = "access_denied", "storage refused to read the image or mask"
    DECODE = "decode", "the bytes are not a readable image (truncated, another format, too large)"
    # a storage error that is not transient (e.g. a malformed request)
    STORAGE = "storage", "storage refused the request for a reason retries do not fix"
    # the work
    # the model failed on this image (alone, after splitting its batch)
    MODEL = "model", "the model failed on this image"
    DETECT = "detect", "the detector failed on this row (its detection or its verify)"
    # verify still found what was removed (above max_residual)
    RESIDUAL = "residual", ("verify still found what was removed inside the mask, above "
                            "max_residual; the output is kept for review")  # fmt: skip
    # its working size needs more than max_model_memory_gb
    TOO_LARGE = "too_large", ("a model pass at its working size would need more memory than "
                              "max_model_memory_gb (lower max_side or crop_size, or use crop "
                              "mode)")  # fmt: skip
    ENCODE = "encode", "the output could not be encoded"
    CONFIG = "config", "a setting the job refuses"
    MANIFEST = "manifest", "the manifest could not be read"
    LOCKED = "locked", "another run holds the output's lock"
    # a bug: an exception batch-inpaint did not raise on purpose
    INTERNAL = "internal", "a bug in batch-inpaint: please report it with this message"
    # transient: infrastructure, not the row; the next run redoes these by default
    # 5xx, resets, timeouts, full disk, after retries
    STORAGE_TRANSIENT = "storage_transient", "storage failed after retries (5xx, timeouts)"
    OUT_OF_MEMORY = "out_of_memory", "the model's worker ran out of memory"  # on this row

    def __str__(self) -> str:
        return self.value

    @property
    def transient(self) -> bool:
        return self.value in TRANSIENT_KINDS


class MaskConcern(str, Enum):
    """A mask that is probably not what was meant (image/masks.mask_concerns): flagged by
    `manifest validate` and the dry run, noted in the row's `note`, counted in run.json."""

    EMPTY = "empty_mask"  # nothing to fill: the row is skipped
    COVERS_MOST = "mask_covers_most"  # over 90% of the image: inverted?
    GREY = "grey_mask"  # mostly neither black nor white: a photo or a soft mask?
    SIZE = "mask_size"  # another size than its image (an error unless mask_resize)

    def __str__(self) -> str:
        return self.value


TRANSIENT_KINDS = frozenset({ErrorKind.STORAGE_TRANSIENT.value, ErrorKind.OUT_OF_MEMORY.value})


class ExitCode(IntEnum):
    """Exit statuses of `batch-inpaint`, `jobs/inpaint.py` and `jobs/clean.py`."""

    OK = 0  # the job finished, wrote _SUCCESS, and no row is an error
    INCOMPLETE = 1  # rows are missing or outputs failed their checks: no _SUCCESS
    CONFIG = 2  # bad configuration, manifest or output location, before any cluster work
    LOCKED = 3  # another run holds the output's lock
    ERROR_RATE = 4  # error rows of bad input exceeded max_error_rate: no _SUCCESS
    STORAGE = 5  # the output's storage failed past the retries (down, full): stopped cleanly
    ROW_ERRORS = 6  # finished with errors: _SUCCESS written, some rows are errors (within
    # max_error_rate: their results are data, and --retry-errors redoes them)
    INTERRUPTED = 130  # Ctrl-C
