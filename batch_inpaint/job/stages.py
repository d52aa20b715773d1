"""The job's three stages as plain functions over Arrow tables, with no Ray in sight:

1. `prepare_batch` (CPU tasks, job/prepare.py): fetch, decode, build the mask, plan regions, cut.
2. `ModelStage` (GPU or CPU actors, job/model_stage.py): group regions by working size and
   parameters, run the model.
3. `finish_batch` (CPU tasks, job/finish.py): paste back, encode, write, build the result row.

Each takes a table and returns one; the columns they pass are the work item declared in
job/workitem.py. A row that fails anywhere becomes an error row and travels on, so every manifest
row reaches the metadata; every other manifest column is passed through untouched.
"""

from batch_inpaint.job.context import JobContext
from batch_inpaint.job.finish import finish_batch, output_uri
from batch_inpaint.job.model_stage import ModelStage
from batch_inpaint.job.prepare import build_mask, prepare_batch, row_seed

__all__ = [
    "JobContext",
    "ModelStage",
    "build_mask",
    "finish_batch",
    "output_uri",
    "prepare_batch",
    "row_seed",
]
