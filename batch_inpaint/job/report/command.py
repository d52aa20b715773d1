"""The command that reproduces a run, for report.html: `batch-inpaint run` with every setting that
differs from its default, flag names derived from the options as `run --help` derives them; URIs
redacted (no password or signature) and no credential, as in job.json."""

from __future__ import annotations

import shlex

_REDACTED = ("manifest", "output", "model", "endpoint_url", "address")


def command_line(cfg) -> str:
    from batch_inpaint.config import KEYS
    from batch_inpaint.option import default, kind
    from batch_inpaint.storage.uri import redact_uri

    values = cfg.to_dict()
    parts = ["batch-inpaint", "run"]
    for name, key in KEYS.items():
        value = values[name]
        if name not in ("manifest", "output") and (value == default(key.field) or value is None):
            continue
        flag = "--" + name.replace("_", "-")
        base, _ = kind(key.field)
        if base == "bool":
            parts.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif base == "list":
            parts += [p for v in value for p in (flag, shlex.quote(str(v)))]
        else:
            shown = redact_uri(str(value)) if name in _REDACTED else str(value)
            parts += [flag, shlex.quote(shown)]
    return " ".join(parts)
