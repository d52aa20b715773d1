"""`batch-inpaint results` (issue 25, item 8): the rows a user asks about, filtered by status and
kind, in chosen columns, as a table, CSV or JSON; and the help that teaches (item 12): examples at
the end of every command's help, `--version`, one line for a wrong choice."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest

from batch_inpaint import __version__
from batch_inpaint.cli import build_parser, main
from batch_inpaint.vocab import ExitCode
from tests.job.report.test_report import finished_output


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A finished local output: 4 ok rows and one whose image is not there (not_found)."""
    cfg, summary = finished_output(tmp_path_factory.mktemp("results"))
    return cfg.output, summary


def test_error_rows_as_a_table(output, capsys):
    out, summary = output
    assert main(["results", "--output", out, "--status", "error"]) == ExitCode.OK
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "ERROR_KIND", "ERROR", "OUTPUT", "NOTE"]
    assert len(lines) == 1 + summary["counts"]["error"] and "error" in lines[1]
    assert f"{summary['counts']['error']} of {summary['rows']} result rows" in got.err


def test_kind_columns_and_formats(output, capsys):
    out, summary = output
    kind = next(iter(summary["errors_by_kind"]))
    assert main(["results", "--output", out, "--kind", kind, "--columns", "id,error",
                 "--format", "csv"]) == 0  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == summary["errors_by_kind"][kind] and list(rows[0]) == ["id", "error"]
    assert main(["results", "--output", out, "--status", "ok", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == summary["counts"]["ok"] and all(r["status"] == "ok" for r in rows)
    assert all(r["output"].startswith("images/") for r in rows)
    assert main(["results", "--output", out, "--columns", "all", "--format", "json",
                 "--limit", "1"]) == 0  # fmt: skip
    row = json.loads(capsys.readouterr().out)
    assert {"sha256", "model", "params", "finished_at"} <= set(row)


def test_bad_columns_and_a_folder_that_is_no_output_are_one_message(output, tmp_path, capsys):
    out, _ = output
    assert main(["results", "--output", out, "--columns", "id,nope"]) == ExitCode.CONFIG
    assert "no column ['nope']" in capsys.readouterr().err
    assert main(["results", "--output", str(tmp_path)]) == ExitCode.CONFIG
    assert "no job.json" in capsys.readouterr().err


def _commands(parser, name="batch-inpaint"):
    yield name, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, p in a.choices.items():
                yield from _commands(p, f"{name} {sub}")


def test_every_commands_help_ends_with_examples():
    missing = []
    for name, p in _commands(build_parser()):
        text = p.format_help().rstrip().splitlines()
        tail = text[text.index("examples:") + 1 :] if "examples:" in text else []
        if not 2 <= len([t for t in tail if t.strip().startswith("batch-inpaint")]) <= 4:
            missing.append(name)
    assert not missing, missing


def test_version_and_a_wrong_choice_in_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert (
        done.value.code == 0 and capsys.readouterr().out.strip() == f"batch-inpaint {__version__}"
    )
    with pytest.raises(SystemExit) as done:
        main(["run", "--manifest", "m", "--output", "o", "--backend", "sd"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == ExitCode.CONFIG and len(err.splitlines()) == 1, err
    assert "invalid choice: 'sd'" in err and "'opencv'" in err and "'lama'" in err
