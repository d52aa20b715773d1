"""vocab.ErrorKind: one vocabulary of error kinds, each with the description the report prints."""

from __future__ import annotations

import json

from batch_inpaint.job.report.page import KIND_NOTES
from batch_inpaint.vocab import ErrorKind


def test_every_error_kind_has_a_description_and_stays_a_plain_string():
    for kind in ErrorKind:
        assert kind.description and kind.description[0].islower(), kind
        assert ErrorKind(kind.value) is kind and kind == kind.value and str(kind) == kind.value
    assert json.dumps({"k": ErrorKind.TOO_LARGE}) == '{"k": "too_large"}'


def test_the_report_reads_the_descriptions_from_the_vocabulary():
    assert {k.value: k.description for k in ErrorKind} == KIND_NOTES
    assert "no image URI" in KIND_NOTES["missing_image"]
    assert "max_model_memory_gb" in KIND_NOTES["too_large"]
