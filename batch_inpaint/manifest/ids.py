"""The result ids of manifest rows that can't be processed: an id used more than once, or none.

Every manifest row gets one result row, so these rows need result ids of their own: the first row
of a duplicated id keeps the id, later ones get 'id#2', 'id#3', ..., and a row with no id gets
'#row-N' (its position, from 0). Any id is allowed in a manifest, so such a form may be another
row's real id ('x#2', '#row-4'): then '#' is appended until it is no row's id and no other
generated id. The same manifest always gives the same ids, so a rerun finds its rows done."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable


def generated_ids(
    positions: Iterable[int],
    named: Iterable[str | None],
    taken: Callable[[list[str]], set[str]],
) -> list[str]:
    """Result ids for the bad rows at `positions` (in manifest order) whose ids are `named`
    (None: no id). `taken(candidates)` answers which candidates are ids of the manifest."""
    out: list[str] = []
    seen: dict[str, int] = {}
    generated: list[int] = []  # indexes into out of the ids made up here
    for n, i in zip(positions, named, strict=True):
        if i is None:
            out.append(f"#row-{n}")
        else:
            seen[i] = seen.get(i, 0) + 1
            if seen[i] == 1:
                out.append(i)  # every row of this id is an error row: none else has it
                continue
            out.append(f"{i}#{seen[i]}")
        generated.append(len(out) - 1)
    made = set(generated)
    used = {out[k] for k in range(len(out)) if k not in made}
    pending = generated
    while pending:
        real = taken([out[k] for k in pending])
        again = []
        for k in pending:
            if out[k] in real or out[k] in used:
                out[k] += "#"
                again.append(k)
            else:
                used.add(out[k])
        pending = again
    return out


def collided(result_id: str) -> bool:
    """Whether a generated id was extended because its usual form was taken."""
    return result_id.endswith("#")


def bad_row_ids(ids: list[str | None]) -> dict[int, str]:
    """Row number -> result id of every row of a (small, Python) id list whose id is missing or
    used more than once: what the job names their error rows."""
    counts = Counter(i for i in ids if i)
    positions = [n for n, i in enumerate(ids) if not i or counts[i] > 1]
    named = [ids[n] or None for n in positions]
    made = generated_ids(positions, named, lambda c: set(c) & counts.keys())
    return dict(zip(positions, made, strict=True))


def collision_note(result_id: str) -> str:
    """'' unless `result_id` was extended: then what a message about its row should add."""
    if not collided(result_id):
        return ""
    usual = result_id.rstrip("#")
    return f"; its error row's result id is {result_id!r} ({usual!r} is another row's id)"
