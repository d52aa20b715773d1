"""The batch job: Ray-free stages over a typed work item, the driver's bookkeeping (scan, results,
lock, finalize, report) and `ray_job`, the only module that imports ray."""
