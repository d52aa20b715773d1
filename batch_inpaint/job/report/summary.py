"""What the user reads at the end of a run: the summary on the terminal, `{output}/report.html`
(job/report/page.py) and, on request, side-by-side pictures (input | mask | output) of the report's
sample. `regenerate` rebuilds both for any finished output (`batch-inpaint report`)."""

from __future__ import annotations

import html
import json
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from batch_inpaint.job.io.output_folder import (
    DATA,
    IMAGES,
    LOCK,
    METADATA,
    REPORT,
    RUN_JSON,
    SUCCESS,
    OutputFolder,
)
from batch_inpaint.job.report.page import render as render
from batch_inpaint.job.report.pictures import row_pictures as row_pictures
from batch_inpaint.job.report.pictures import sample_indices
from batch_inpaint.job.report.residuals import residual_summary as residual_summary
from batch_inpaint.job.report.residuals import residual_text
from batch_inpaint.shard_options import SHARD_FORMATS
from batch_inpaint.storage.uri import is_local, join, local_path
from batch_inpaint.vocab import DONE


def headline(summary: dict) -> str:
    """SUCCESS, FINISHED WITH ERRORS (_SUCCESS written, some rows are errors), FAILED (too many
    error rows: max_error_rate) or INCOMPLETE; what the exit status says too (cli.job_exit_status)."""
    if summary.get("success"):
        return "FINISHED WITH ERRORS" if summary.get("counts", {}).get("error") else "SUCCESS"
    if (summary.get("error_rate") or {}).get("exceeded"):
        return "FAILED"
    return "INCOMPLETE"


def summary_text(summary: dict, report_uri: str | None) -> str:
    c = summary.get("counts", {})
    n = summary.get("rows_this_run", 0)
    pace = (f"{n} rows this run, {summary.get('rows_per_s', 0)} rows/s" if n
            else "nothing to do: every row was finished by an earlier run")  # fmt: skip
    lines = [
        f"batch-inpaint: {headline(summary)} - {c.get('ok', 0)} ok, {c.get('error', 0)} error, "
        f"{c.get('skipped', 0)} skipped ({pace})",
    ]
    if summary.get("errors_by_kind"):
        kinds = ", ".join(f"{k}: {n}" for k, n in summary["errors_by_kind"].items())
        lines.append(f"  errors by kind: {kinds}")
    for kind, top in (summary.get("top_errors") or {}).items():
        if top:
            lines.append(f"  e.g. {kind} ({top[0]['count']} rows): {top[0]['message']}")
    if summary.get("mask_concerns"):
        odd = ", ".join(f"{k}: {n}" for k, n in summary["mask_concerns"].items())
        lines.append(f"  masks:    {odd} (suspicious: each row's `note` says why; "
                     "docs/masks.md)")  # fmt: skip
    if summary.get("residuals"):
        lines.append(f"  verify:   {residual_text(summary['residuals'])}")
    for p in summary.get("problems", []):
        lines.append(f"  problem: {p}")
    out = summary.get("output", "")
    where = DATA if summary.get("output_format") in SHARD_FORMATS else IMAGES  # shards: data/
    lines.append(f"  outputs:  {join(out, where)}/   metadata: {join(out, METADATA)}/")
    if summary.get("unknown_objects_kept"):
        lines.append(
            f"  note: {summary['unknown_objects_kept']} object(s) under images/ were not written "
            "by this job; they were left alone"
        )
    if summary.get("rows_of_other_manifests_kept"):
        lines.append(
            f"  note: results of {summary['rows_of_other_manifests_kept']} row(s) not in this "
            "manifest were kept (--prune drops them)"
        )
    if report_uri:
        lines.append(f"  report:   {report_uri}")
    return "\n".join(lines)


TOP_ERRORS = 5  # messages kept per error kind in run.json, most frequent first
_PATHS = re.compile(r"\S*/\S*")  # a path or URI within a message
_ROW_PREFIX = re.compile(r"""^row (?:None|'.*?'|".*?"): """)  # row_error's: the row's name


def top_errors(table: pa.Table, per_kind: int = TOP_ERRORS) -> dict[str, list[dict]]:
    """Per error kind, its most frequent messages (the row's name taken off, messages that
    differ only in a path or URI counted together, 300 characters at most) with their counts: {kind: [{"message", "count"}]}, at most `per_kind` each."""
    import pyarrow.compute as pc

    from batch_inpaint.vocab import Status

    if not table.num_rows or "error" not in table.column_names:
        return {}
    errors = table.filter(pc.fill_null(pc.equal(table.column("status"), Status.ERROR.value), False))
    counts: dict[str, Counter] = {}
    first: dict[str, str] = {}  # a group's first message, as it was
    for kind, msg in zip(errors.column("error_kind").to_pylist(),
                         errors.column("error").to_pylist(), strict=True):  # fmt: skip
        text = _ROW_PREFIX.sub("", msg or "")[:300]
        key = _PATHS.sub("…", text)  # the same failure on other files is one message
        first.setdefault(key, text)
        counts.setdefault(str(kind), Counter())[key] += 1
    return {k: [{"message": first[m], "count": n} for m, n in c.most_common(per_kind)]
            for k, c in sorted(counts.items())}  # fmt: skip


def mask_concern_counts(table: pa.Table) -> dict[str, int]:
    """Rows per suspicious-mask concern, from the rows' notes (image/masks.mask_concerns)."""
    import pyarrow.compute as pc

    from batch_inpaint.vocab import MaskConcern

    if "note" not in table.column_names:
        return {}
    known = {c.value for c in MaskConcern}
    found: Counter = Counter()
    for note in pc.drop_null(table.column("note")).to_pylist():
        found.update({part.split(": ", 1)[0] for part in note.split("; ")} & known)
    return {c.value: found[c.value] for c in MaskConcern if found[c.value]}


def write_report(storage, cfg, table: pa.Table, summary: dict) -> str:
    folder = OutputFolder(storage, cfg.output)
    folder.write(REPORT, render(summary, table, cfg, storage, cfg.report_sample).encode("utf-8"))
    return folder.report


def side_by_side(output: str | Path, dest: str | Path | None = None, *, storage=None,
                 cfg=None, table: pa.Table | None = None, run_id: str | None = None) -> list[Path]:  # fmt: skip
    """One PNG per finished row of the report's sample (input | mask | output) in `dest`
    (default: `side_by_side/` in a local output). The config comes from the output's job.json."""
    import numpy as np
    from PIL import Image

    from batch_inpaint.job.driver import results

    output = str(output)
    if cfg is None or storage is None:
        cfg, storage, run_id = load_job(output, storage)
    if table is None:
        table, _ = results.read_results(storage, output)
    if dest is None:
        if not is_local(output):
            raise ValueError("side_by_side: give a local folder for an object-storage output")
        dest = Path(local_path(output)) / "side_by_side"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    if table is None:
        return made
    from batch_inpaint.job.report import page

    # the page's sample: the rows its Errors section shows are left out of it
    table = page.without(table, page.shown_errors(table, page.MAX_ERRORS_PER_KIND,
                                                  page.MAX_ERRORS_SHOWN)[2])  # fmt: skip
    idx = sample_indices(table, cfg.report_sample, run_id or "report")
    for row in table.take(pa.array(idx, pa.int64())).to_pylist():
        kept = row["status"] in DONE or row.get("error_kind") == "residual"  # residual: kept
        if not kept or not row.get("output"):
            continue
        sheet = np.concatenate(row_pictures(row, storage, cfg), axis=1)
        path = dest / f"{Path(row['output']).stem}.png"
        Image.fromarray(sheet).save(path, compress_level=3)
        made.append(path)
    return made


def local_copy(dest: Path, page: str, storage, output: str) -> str:
    """report.html in `dest` and every file of the output it links to relatively (the outputs
    and detected masks of its cards), so the copy opens in a browser with working links."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in sorted(set(re.findall(r'href="((?:images|masks)/[^"]+)"', page))):
        rel = html.unescape(rel)
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:  # a key that would leave the copy's folder
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(OutputFolder(storage, output).read(rel))
    (dest / REPORT).write_text(page, encoding="utf-8")
    return str(dest / REPORT)


def load_job(output: str, storage=None):
    """The config (from job.json, with `output` as given: job.json's is redacted), a Storage for
    it, and the last run id. ConfigError when the location holds no batch-inpaint output."""
    from batch_inpaint.config import KEYS, JobConfig
    from batch_inpaint.errors import ConfigError, NotFoundError
    from batch_inpaint.storage.store import Storage

    probe = storage or Storage()
    job_json = OutputFolder(probe, output).job_json
    try:
        body = json.loads(probe.read_bytes(job_json))
    except NotFoundError:
        raise ConfigError(
            f"{output}: no job.json, so no run of batch-inpaint wrote here; give the --output "
            "of a run"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{job_json} is not valid JSON: {exc}") from None
    known = {k: v for k, v in (body.get("config") or {}).items() if k in KEYS}
    cfg = JobConfig.from_dict({**known, "output": output}, source=job_json)
    return cfg, storage or Storage(cfg.storage_options()), body.get("run_id")


def lock_holder(storage, output: str, ttl_s: float = 120.0) -> dict | None:
    """The body of `{output}/_LOCK` when a live run holds it (read only; never taken), else None."""
    from batch_inpaint.errors import InpaintError
    from batch_inpaint.job.driver.lock import OutputLock, _parse, _renewed_at

    try:
        body = _parse(OutputFolder(storage, output).read(LOCK))
    except InpaintError:  # not found, or unreadable: nobody we can name holds it
        return None
    if body is None or OutputLock(storage, output, ttl_s)._holder_died(body):
        return None
    age = time.time() - _renewed_at(body)
    return (
        {**body, "age_s": round(age, 1)}
        if age < float(body.get("stale_after_s") or ttl_s)
        else None
    )


def regenerate(output: str, storage=None, side_by_side_dir: str | Path | None = None,
               to: str | Path | None = None) -> dict:  # fmt: skip
    """Rebuild report.html of a finished output (and side-by-side PNGs when a folder is given or
    the output is local). `to`: a local folder for a copy instead (report.html, side_by_side/
    and the full-size files the page links to), the output left as it is (read only).
    Returns {"report", "summary", "side_by_side", "pictures"}."""
    from batch_inpaint.errors import ConfigError
    from batch_inpaint.job.driver import results
    from batch_inpaint.job.driver.lock import LockedError
    from batch_inpaint.manifest.schema import RESULT_SCHEMA

    cfg, storage, run_id = load_job(output, storage)
    folder = OutputFolder(storage, output)
    held = lock_holder(storage, output, cfg.lock_ttl_s)
    if held:
        raise LockedError(
            f"{folder.lock}: a run into this output is in progress (host "
            f"{held.get('host', '?')} process {held.get('pid', '?')}); make the report after it ends"
        )
    table, _ = results.read_results(storage, output)
    table = table if table is not None else RESULT_SCHEMA.empty_table()
    success_file = folder.exists(SUCCESS)
    try:
        summary = json.loads(folder.read(RUN_JSON))
    except Exception:  # noqa: BLE001 - a run that never finished wrote none: summarize here
        summary = results.summarize(table, time.time(), time.time(), 0)
        summary.update(run_id=run_id, problems=["run.json is missing: the last run did not "
                                                 "finish; rerun the job to finish it"])  # fmt: skip
    if not isinstance(summary, dict):
        raise ConfigError(f"{folder.run_json} does not hold a run summary")
    if summary.get("success") and not success_file:
        summary.setdefault("problems", []).append(
            "_SUCCESS is missing: a later run started and did not finish; rerun to finish it"
        )
    summary.update(output=output, success=bool(summary.get("success")) and success_file)
    if "residuals" not in summary:  # run.json of an older version, or none
        summary["residuals"] = residual_summary(table, cfg.detection.max_residual)
    if to is not None:
        uri = local_copy(Path(to), render(summary, table, cfg, storage, cfg.report_sample),
                         storage, output)  # fmt: skip
    else:
        uri = write_report(storage, cfg, table, summary)
    dest = side_by_side_dir
    if dest is None and (to is not None or is_local(output)):
        dest = (
            Path(to) / "side_by_side"
            if to is not None
            else Path(local_path(output)) / "side_by_side"
        )
    made = []
    if dest is not None:
        run = summary.get("run_id") or run_id
        made = side_by_side(output, dest, storage=storage, cfg=cfg, table=table, run_id=run)
    return {"report": uri, "summary": summary, "side_by_side": str(dest) if dest else None,
            "pictures": [str(p) for p in made]}  # fmt: skip
