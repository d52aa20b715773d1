"""Shard sets (manifest/shard_set.py): Manifest.from_parquet_dataset on Parquet the `datasets`
package writes, Manifest.from_webdataset on tars `webdataset` writes, the shard list file and
`batch-inpaint manifest build --parquet-dataset / --webdataset`."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from batch_inpaint import JobConfig, Manifest
from batch_inpaint.cli import main
from batch_inpaint.errors import ConfigError, ManifestError
from batch_inpaint.manifest.shard_set import read_shard_list
from batch_inpaint.storage.store import Storage
from batch_inpaint.vocab import ExitCode


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def hf_dataset(tmp_path):
    """Two Parquet shards as `datasets` writes them: an Image feature (struct {bytes, path})."""
    import datasets

    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    for shard in range(2):
        rows = {"picture": [{"bytes": png(shard * 10 + i), "path": None} for i in range(3)],
                "caption": [f"row {i}" for i in range(3)]}  # fmt: skip
        features = datasets.Features(
            {"picture": datasets.Image(), "caption": datasets.Value("string")}
        )
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(folder / f"train-{shard:05d}-of-00002.parquet"))
    return folder


@pytest.fixture
def tars(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    for shard in range(3):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar"), encoder=False) as writer:
            for i in range(2):
                writer.write({"__key__": f"{shard}{i:04d}", "jpg": png(i), "seg.png": png(9)})
    return folder


def test_from_parquet_dataset_describes_the_shards_for_a_run(hf_dataset, tmp_path):
    shards = Manifest.from_parquet_dataset(str(hf_dataset), image_column="picture")
    assert shards.format == "parquet" and len(shards) == 2
    assert [s.name for s in shards.shards] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert shards.config() == {"manifest": str(hf_dataset), "image_column": "picture"}
    cfg = JobConfig(output=str(tmp_path / "out"), **shards.config())
    assert cfg.manifest == str(hf_dataset)
    glob = Manifest.from_parquet_dataset(f"{hf_dataset}/train-*.parquet", "picture")
    assert glob.uris == shards.uris
    files = Manifest.from_parquet_dataset(shards.uris[:1], "picture")
    assert files.source is None and files.root == str(hf_dataset)
    with pytest.raises(ConfigError, match="write\\(\\) it"):
        files.config()


def test_from_parquet_dataset_says_which_column_is_not_image_bytes(hf_dataset, tmp_path):
    with pytest.raises(ConfigError, match="no column 'image'.*picture, caption"):
        Manifest.from_parquet_dataset(str(hf_dataset))
    with pytest.raises(ConfigError, match="column 'caption' is string, not image bytes"):
        Manifest.from_parquet_dataset(str(hf_dataset), image_column="caption")
    uris = tmp_path / "uris"
    uris.mkdir()
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"], "mask": ["m.png"]}),
                   uris / "m.parquet")  # fmt: skip
    with pytest.raises(ConfigError, match="Manifest.read"):
        Manifest.from_parquet_dataset(str(uris))


def test_from_webdataset_and_the_shard_list_file(tars, tmp_path):
    shards = Manifest.from_webdataset(f"{tars}/{{00000..00002}}.tar", mask_member="seg.png")
    assert shards.format == "webdataset"
    assert [s.name for s in shards.shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert shards.config() == {"manifest": f"{tars}/{{00000..00002}}.tar",
                               "mask_member": "seg.png"}  # fmt: skip
    pinned = shards.write(str(tmp_path / "set.shards.json"))
    assert pinned.config()["manifest"] == str(tmp_path / "set.shards.json")
    back = read_shard_list(Storage(), str(tmp_path / "set.shards.json"))
    assert back.uris == shards.uris and back.format == "webdataset" and back.root == str(tars)
    again = Manifest.from_webdataset(str(tmp_path / "set.shards.json"))
    assert again.uris == shards.uris
    with pytest.raises(ConfigError, match="webdataset shards, not parquet"):
        Manifest.from_parquet_dataset(str(tars))
    with pytest.raises(ConfigError, match="ends in .shards.json"):
        shards.write(str(tmp_path / "set.json"))
    (tmp_path / "bad.shards.json").write_text('{"kind": "something else"}')
    with pytest.raises(ManifestError, match="bad.shards.json: not a shard list"):
        read_shard_list(Storage(), str(tmp_path / "bad.shards.json"))
    with pytest.raises(ConfigError, match="2 of its 5 shards are not there"):
        Manifest.from_webdataset(f"{tars}/{{00000..00004}}.tar")


def test_manifest_build_writes_a_shard_list(hf_dataset, tars, tmp_path, capsys):
    out = tmp_path / "hf.shards.json"
    rc = main(["manifest", "build", "--parquet-dataset", str(hf_dataset),
               "--image-column", "picture", "-o", str(out)])  # fmt: skip
    assert rc == ExitCode.OK
    said = capsys.readouterr().out
    assert "a list of 2 parquet shards" in said
    assert f"run --manifest {out} --image-column picture --output OUT --dry-run" in said
    body = json.loads(out.read_text())
    assert body["format"] == "parquet" and len(body["shards"]) == 2

    out = tmp_path / "wds.shards.json"
    rc = main(["manifest", "build", "--webdataset", f"{tars}/*.tar", "-o", str(out)])
    assert rc == ExitCode.OK
    assert json.loads(out.read_text())["shards"] == ["00000.tar", "00001.tar", "00002.tar"]

    rc = main(["manifest", "build", "--webdataset", str(tars), "--images", str(tars),
               "-o", str(out)])  # fmt: skip
    assert rc == ExitCode.CONFIG
    assert "give one of --images, --webdataset, --parquet-dataset" in capsys.readouterr().err


def test_a_pinned_shard_set_dry_runs_as_the_job_would_read_it(tmp_path):
    from batch_inpaint import plan_job

    folder = tmp_path / "wds"
    folder.mkdir()
    for shard in range(2):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar"), encoder=False) as writer:
            for i in range(3):
                writer.write({"__key__": f"{shard}-{i}", "png": png(i), "seg.png": png(50 + i)})
    shards = Manifest.from_webdataset(str(folder), mask_member="seg.png")
    (folder / "00002.tar").write_bytes((folder / "00000.tar").read_bytes())  # arrives later
    pinned = shards.write(str(tmp_path / "set.shards.json"))
    cfg = JobConfig(output=str(tmp_path / "out"), backend="opencv", **pinned.config())
    plan = plan_job(cfg)
    assert plan["rows"]["manifest"] == 6  # the pinned shards, not the one that came later
    assert plan["validation"]["problems"] == 0
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
