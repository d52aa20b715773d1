"""The seams for rows in and rows out (job/io/sources.py, job/io/writers.py, job/io/output_folder.py): the
manifest source and the files writer as the job uses them, and a second real implementation of
each written here (rows from an Arrow table; outputs packed into tar files, one per block) that
the driver's scan, the local executor, resume and finalize's reconcile take unchanged."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.driver import done, plan
from batch_inpaint.job.driver.finalize import RunState, finalize, reconcile_images
from batch_inpaint.job.driver.lock import LeasedStorage, LostLockError
from batch_inpaint.job.driver.scan import scan_manifest
from batch_inpaint.job.executors.local import LocalExecutor, read_blocks
from batch_inpaint.job.io.output_folder import OWN_NAMES, OutputFolder
from batch_inpaint.job.io.sources import ParquetManifest
from batch_inpaint.job.io.writers import FilesWriter, missing_and_unlisted, open_writer
from batch_inpaint.job.run import stream
from batch_inpaint.storage.store import Storage
from batch_inpaint.storage.uri import output_key
from tests.fixtures_ray import local_dataset, manifest_bytes, manifest_table


class TableSource:
    """Rows from an Arrow table in memory (e.g. a table a notebook built): a second source."""

    name = "table"

    def __init__(self, table: pa.Table, base: str, uri: str):
        self.table, self.base, self.uri = table, base, uri

    def schema(self) -> pa.Schema:
        return self.table.schema

    def check(self, where: str, needs_mask: bool = True) -> None:
        if "id" not in self.table.column_names:
            raise ConfigError(f"{where}: no id column")

    def batches(self, columns, batch_size=1 << 18):
        return self.table.select(columns).to_batches(max_chunksize=batch_size)

    def rows_where(self, expr) -> pa.Table:
        import pyarrow.dataset as pads

        return pads.dataset(self.table).to_table(filter=expr)

    def blocks(self, rows: int, keep=None):
        table = keep(self.table) if keep is not None else self.table
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)

    def ray_dataset(self, data):
        return data.from_arrow(self.table)


class PackWriter:
    """Outputs packed into one tar per block under packs/ (written whole at close, create-only):
    a second writer, shaped like a shard writer. It answers "which outputs exist" from the pack
    listing and the packs' member names: one LIST call however many rows."""

    name = "packs"

    def __init__(self, folder: OutputFolder):
        self.folder, self.pending = folder, {}
        self.pack = f"{uuid.uuid4().hex[:8]}.tar"  # the next pack's name: outputs name it

    def write(self, row_id, data, row=None) -> str:
        member = output_key(str(row_id), ".png")
        self.pending[member] = data
        return f"packs/{self.pack}#{member}"

    def write_mask(self, row_id, data) -> str:
        raise NotImplementedError  # this writer is for jobs without detection

    def close(self) -> None:
        self.folder.write(f"packs/{self.pack}", _tar(self.pending), overwrite=False)
        self.pending, self.pack = {}, f"{uuid.uuid4().hex[:8]}.tar"

    def listing(self):
        uris, rels = [], []
        for uri in self.folder.list("packs"):
            pack = uri.rsplit("/", 1)[-1]
            with tarfile.open(fileobj=io.BytesIO(self.folder.storage.read_bytes(uri))) as tar:
                for member in tar.getnames():
                    uris.append(f"{uri}#{member}")
                    rels.append(f"packs/{pack}#{member}")
        return uris, pa.array(rels, pa.string())

    def present(self) -> pa.Array:
        return self.listing()[1]

    def read(self, rel: str) -> bytes:
        pack, member = rel.split("#")
        with tarfile.open(fileobj=io.BytesIO(self.folder.read(pack))) as tar:
            return tar.extractfile(member).read()

    def remove(self, uri: str) -> None:
        """Rewrite the pack without the member (the others stay byte for byte)."""
        pack, member = uri.split("#")
        with tarfile.open(fileobj=io.BytesIO(self.folder.storage.read_bytes(pack))) as tar:
            kept = {m: tar.extractfile(m).read() for m in tar.getnames() if m != member}
        self.folder.storage.write_bytes(pack, _tar(kept), root=self.folder.root)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class CountingStorage(Storage):
    """Local storage that counts its LIST calls."""

    lists = 0

    def list(self, prefix, **kwargs):
        self.lists += 1
        return super().list(prefix, **kwargs)


def _cfg(root: Path, **kw) -> JobConfig:
    return JobConfig(manifest=str(root / "manifest.parquet"), output=str(root / "out"),
                     backend="opencv", **kw)  # fmt: skip


def test_output_folder_owns_the_names_and_writes_under_its_root(tmp_path):
    folder = OutputFolder(Storage(), str(tmp_path / "out"))
    assert folder.success == str(tmp_path / "out" / "_SUCCESS")
    assert folder.images.endswith("/out/images") and folder.metadata.endswith("/out/metadata")
    names = {folder.report, folder.run_json, folder.job_json, folder.lock, folder.marker}
    assert {n.rsplit("/", 1)[-1] for n in names} <= set(OWN_NAMES)
    assert folder.list("images") == []  # not there yet: nothing, not an error
    folder.write("images/a.png", b"a")
    folder.write("images/sub/b.png", b"b")
    assert folder.exists("images/a.png") and folder.read("images/a.png") == b"a"
    rels = folder.relative(folder.list("images")).to_pylist()
    assert sorted(rels) == ["images/a.png", "images/sub/b.png"]
    folder.delete("images/a.png")
    assert not (tmp_path / "out" / "images" / "a.png").exists()


def test_files_writer_names_writes_reads_and_lists(tmp_path):
    writer = open_writer(_cfg(tmp_path, output_format="jpeg"), Storage())
    assert isinstance(writer, FilesWriter)
    rel = writer.write("row/1", b"jpeg bytes")
    assert rel == "images/" + output_key("row/1", ".jpg")
    assert writer.read(rel) == b"jpeg bytes"
    mask = writer.write_mask("row/1", b"png")
    assert mask == "masks/" + output_key("row/1", ".png")
    assert (tmp_path / "out" / mask).read_bytes() == b"png"
    writer.close()
    assert writer.present().to_pylist() == [rel]  # masks are no outputs
    keep = pa.array([rel, "images/gone.jpg"], pa.string())
    writer.write("stray", b"x")
    missing, extra = missing_and_unlisted(writer, keep)
    assert missing.to_pylist() == ["images/gone.jpg"]
    assert [r for _, r in extra] == ["images/stray.jpg"]
    writer.remove(extra[0][0])
    assert writer.present().to_pylist() == [rel]


def test_parquet_manifest_reads_blocks_checks_parts_and_pickles(tmp_path):
    _, rows = local_dataset(tmp_path, 5)
    source = ParquetManifest(Storage(), str(tmp_path / "manifest.parquet"))
    assert source.base == str(tmp_path)
    assert source.schema().names[:3] == ["id", "image", "mask"]
    source.check("manifest", needs_mask=True)
    keep = lambda t: t.filter(pc.not_equal(t.column("id"), "r002"))  # noqa: E731
    blocks = list(source.blocks(2, keep))
    assert [b.num_rows for b in blocks] == [2, 2]
    assert [i for b in blocks for i in b.column("id").to_pylist()] == [
        "r000",
        "r001",
        "r003",
        "r004",
    ]
    ids = [i for b in source.batches(["id"]) for i in b.column("id").to_pylist()]
    assert ids == [r["id"] for r in rows]
    assert source.rows_where(pc.field("id") == "r003").column("image").to_pylist() == [
        "images/r003.png"
    ]
    again = pickle.loads(pickle.dumps(source))  # Ray ships it: the pyarrow dataset stays behind
    assert again._dataset is None and again.schema().names == source.schema().names
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.parquet").write_bytes(manifest_bytes([{**r, "note": "x"} for r in rows[:2]]))
    other = manifest_table(rows[2:]).append_column("note", pa.array([1, 2, 3], pa.int64()))
    pq.write_table(other, parts / "b.parquet")
    with pytest.raises(ConfigError, match="'note' is string in part .* but int64"):
        ParquetManifest(Storage(), str(parts)).check("manifest")


def test_a_second_source_feeds_the_scan_and_the_local_executor(tmp_path):
    """The driver's scan and the local executor take their rows from the source, not from
    cfg.manifest: cfg's manifest holds 4 rows, the table source 3 of them (one id twice)."""
    _, rows = local_dataset(tmp_path, 4)
    table = manifest_table([rows[0], rows[1], rows[1], rows[3]])
    source = TableSource(table, str(tmp_path), "memory://rows")
    cfg = _cfg(tmp_path)
    storage = Storage(cfg.storage_options())
    scan = scan_manifest(storage, cfg, source=source)
    assert scan.source is source and scan.inputs[0] == "memory://rows"
    assert scan.ids.to_pylist() == ["r000", "r001", "r001", "r003"]
    assert scan.bad_rows.column("error_kind").to_pylist() == ["duplicate_id"] * 2
    run = RunState(cfg, storage, scan, "run-s", time.time())
    assert run.source is source
    with plan.lock_for(run):
        assert isinstance(run.folder.storage, LeasedStorage)  # the folder as it is now
        job = plan.open_run(run, "new")
        assert job.todo == 2
        stream(job, LocalExecutor().results(job))
        job.writer.flush()
        summary = finalize(run)
    assert not isinstance(run.folder.storage, LeasedStorage)
    assert summary["success"] and summary["counts"] == {"ok": 2, "error": 2, "skipped": 0}
    written = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert written == ["r000.png", "r003.png"]  # r002 is in cfg.manifest only
    assert sorted(run.samples.present().to_pylist()) == ["images/r000.png", "images/r003.png"]
    blocks = list(read_blocks(source, pa.array(["r001"]), 1))
    assert [b.column("id").to_pylist() for b in blocks] == [["r000"], ["r003"]]


def test_resume_and_reconcile_ask_the_writer_which_outputs_exist(tmp_path):
    """A pack writer: resume counts a row done when its member is in a pack, found with one
    LIST call for 300 rows; reconcile finds a missing member and removes an orphan one."""
    storage = CountingStorage()
    out = str(tmp_path / "out")
    writer = PackWriter(OutputFolder(storage, out))
    outputs = {}
    for block in range(3):
        outputs |= {
            f"r{block}{i:02d}": writer.write(f"r{block}{i:02d}", b"img") for i in range(100)
        }
        writer.close()
    assert writer.read(outputs["r105"]) == b"img"
    rows = pa.table({"id": list(outputs) + ["lost"], "status": ["ok"] * 301,
                     "output": list(outputs.values()) + ["packs/x.tar#lost.png"]})  # fmt: skip
    storage.lists = 0
    finished = done.finished_ids(storage, out, False, rows, writer=writer)
    assert storage.lists == 1 and len(finished) == 300 and "lost" not in finished.to_pylist()
    # the files writer over the same output sees none of them: the answer is the writer's
    assert len(done.finished_ids(storage, out, False, rows)) == 0
    keep = pa.array(list(outputs.values())[1:] + ["packs/x.tar#lost.png"], pa.string())
    orphan = list(outputs.values())[0]
    missing, removed, unknown = reconcile_images(writer, keep, lambda rel: rel == orphan)
    assert missing.to_pylist() == ["packs/x.tar#lost.png"]
    assert (removed, unknown) == (1, 0)
    assert orphan not in writer.present().to_pylist() and len(writer.present()) == 299


def test_a_folder_made_under_the_lock_stops_writing_once_the_lock_is_lost(tmp_path):
    _, rows = local_dataset(tmp_path, 1)
    cfg = _cfg(tmp_path, lock_ttl_s=1.5)
    storage = Storage(cfg.storage_options())
    run = RunState(cfg, storage, scan_manifest(storage, cfg), "run-l", time.time())
    with plan.lock_for(run) as lock:
        run.folder.write("job.json", b"{}")
        other = {"owner": "another run", "host": "elsewhere", "pid": 1, "renewed_at": time.time()}
        (tmp_path / "out" / "_LOCK").write_text(json.dumps(other))  # another run took it over
        deadline = time.monotonic() + 5
        with pytest.raises(LostLockError):
            while time.monotonic() < deadline:
                run.folder.write("run.json", b"{}")
                time.sleep(0.1)
        assert lock is run.storage.lease
