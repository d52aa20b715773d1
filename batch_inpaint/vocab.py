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
    """Values of the result table's `error_kind` column and of validation problems."""

    # the row itself: its id, URIs, values or mask
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    MISSING_IMAGE = "missing_image"
    NO_MASK = "no_mask"
    MASK = "mask"
    BAD_BOX = "bad_box"
    BAD_POLYGON = "bad_polygon"
    NO_ALPHA = "no_alpha"
    BAD_VALUE = "bad_value"
    SIZE_MISMATCH = "size_mismatch"
    URI_REJECTED = "uri_rejected"
    # the objects the row names
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    DECODE = "decode"
    STORAGE = "storage"  # a storage error that is not transient (e.g. a malformed request)
    # the work
    MODEL = "model"  # the model failed on this image (alone, after splitting its batch)
    DETECT = "detect"  # the detector failed on this image
    RESIDUAL = "residual"  # verify still found what was removed (above max_residual)
    TOO_LARGE = "too_large"  # its working size needs more than max_model_memory_gb
    ENCODE = "encode"
    CONFIG = "config"
    MANIFEST = "manifest"
    LOCKED = "locked"
    INTERNAL = "internal"  # a bug: an exception batch-inpaint did not raise on purpose
    # transient: infrastructure, not the row; the next run redoes these by default
    STORAGE_TRANSIENT = "storage_transient"  # 5xx, resets, timeouts, full disk, after retries
    OUT_OF_MEMORY = "out_of_memory"  # the model's worker ran out of memory on this row

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
