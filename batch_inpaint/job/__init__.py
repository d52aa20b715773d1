"""The batch job: Ray-free stages over a typed work item, the pipeline they form (pipeline.py),
the driver's bookkeeping (scan, results, lock, finalize, report), run_job (run.py) and the
executors that run the pipeline (executors/: local, and Ray Data, the only code that imports
ray)."""
