"""The stages that run on workers, as plain functions and classes over Arrow tables, with no Ray
in sight. In the order a row meets them:

- detect (jobs with queries only): find the masks (stages/detect.py)
- prepare (CPU): fetch, decode, build the mask, plan regions, cut (stages/prepare.py)
- model (GPU or CPU actors): group regions by working size and parameters, run the model
  (stages/model.py; attempts.py counts the work that kills an actor)
- finish (CPU): paste back, encode, write, build the result row (stages/finish.py)
- verify (with --verify): the detector again on each written output (stages/verify.py)

fused.py runs prepare, model and finish in one process (models on the CPU). The columns they pass
are the work item declared in workitem.py (map_rows: the row-by-row pivot); context.py is what
every stage needs; timing.py's StageClock fills each stage's seconds a row. A row that fails
anywhere becomes an error row and travels on, so every manifest row reaches the metadata; every
other manifest column is passed through untouched.
"""
