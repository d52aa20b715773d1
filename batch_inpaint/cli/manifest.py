"""`batch-inpaint manifest build | validate | show`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from batch_inpaint.vocab import ExitCode


def add_storage_flags(p: argparse.ArgumentParser) -> None:
    """Storage flags; unset ones come from AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_PROFILE."""
    g = p.add_argument_group("storage (defaults from the standard AWS environment variables)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    g.add_argument("--region", help="S3 region")
    g.add_argument("--profile", help="AWS profile for credentials")
    g.add_argument("--anon", action="store_true", default=None, help="unsigned requests")
    g.add_argument("--allow-http", action="store_true", default=None, help="allow http(s) URIs")
    g.add_argument(
        "--allowed-buckets", help="comma-separated buckets; URIs in any other bucket are refused"
    )
    from batch_inpaint.storage.options import StorageOptions

    retries = StorageOptions.__dataclass_fields__["retries"].default
    g.add_argument("--retries", type=int, metavar="N",
                   help=f"attempts for transient errors, the first included (default: {retries})")  # fmt: skip


def storage_from_args(args: argparse.Namespace) -> Any:
    from batch_inpaint.storage.store import Storage, StorageOptions

    options = StorageOptions.from_env(
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        anon=args.anon,
        allow_http=args.allow_http,
        allowed_buckets=args.allowed_buckets,
        retries=args.retries,
    )
    return Storage(options)


def add_shard_flags(p: argparse.ArgumentParser, sources: bool) -> None:
    """Where shards keep a row's image, mask and id (as `run`'s flags); `build`: the sources."""
    g = p.add_argument_group("shards" + (" (instead of --images; -o NAME.shards.json)"
                                         if sources else ""))  # fmt: skip
    if sources:
        g.add_argument("--webdataset", metavar="SOURCE", help="WebDataset tars: a folder, a "
                       "file or a pattern such as 's3://b/shards/{00000..00099}.tar'")  # fmt: skip
        g.add_argument("--parquet-dataset", metavar="SOURCE", help="Parquet with image bytes "
                       "(`datasets`, img2dataset): a folder, a file or a pattern")  # fmt: skip
    g.add_argument("--image-column", default="image", help="(Parquet) default: %(default)s")
    g.add_argument("--mask-column", default="mask", help="(Parquet) default: %(default)s")
    g.add_argument(
        "--id-column", help="(Parquet) unset: 'id' when there is one, else '<shard>:<row index>'"
    )
    g.add_argument("--mask-member", default="mask.png", help="(WebDataset) default: %(default)s")


def _shard_keys(args: argparse.Namespace) -> dict:
    return {
        k: getattr(args, k) for k in ("image_column", "mask_column", "id_column", "mask_member")
    }


def add_parser(sub: Any) -> None:
    from batch_inpaint.cli.flags import examples

    p = sub.add_parser("manifest", help="build, check and look at manifests", **examples(
        "batch-inpaint manifest build --images photos/ --masks masks/ -o manifest.parquet",
        "batch-inpaint manifest validate manifest.parquet",
        "batch-inpaint manifest show manifest.parquet -n 5",
    ))  # fmt: skip
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)

    b = msub.add_parser("build", help="pair images with masks by file stem into a manifest",
                        description="Pair every image under --images (a local folder or an "
                        "s3:// prefix) with its mask under --masks by file stem, and write the "
                        "manifest.", **examples(
        "batch-inpaint manifest build --images photos/ --masks masks/ -o manifest.parquet",
        "batch-inpaint manifest build --images s3://b/photos/ --masks s3://b/masks/ "
        "--mask-pattern '{stem}_mask.png' -o s3://b/manifest.parquet",
        "batch-inpaint manifest build --images photos/ --detect 'text,logo' -o manifest.parquet",
    ))  # fmt: skip
    b.add_argument("--images", help="directory or prefix of images")
    add_shard_flags(b, sources=True)
    b.add_argument("--masks", help="directory or prefix of masks")
    b.add_argument(
        "--mask-pattern",
        default="{stem}.*",
        help="mask path relative to --masks; {stem} = image path without extension "
        "(default: %(default)s; e.g. '{stem}_mask.png')",
    )
    b.add_argument("--mask-from-alpha", action="store_true", help="no masks: use image alpha")
    b.add_argument("--detect", metavar="QUERIES",
                   help="no masks (or not for every image): a `detect` column with these queries, "
                   "e.g. 'text,logo'; `run` (or `batch-inpaint detect`) finds the masks from them. "
                   "Without --masks every image is a row")  # fmt: skip
    b.add_argument("--prompt", help="prompt column for every row")
    b.add_argument("-o", "--output", required=True,
                   help="manifest URI (.parquet, or dir/; shards: NAME.shards.json)")  # fmt: skip
    b.add_argument("--rows-per-file", type=int, help="write a directory of parts")
    b.add_argument("--strict", action="store_true", help="exit 1 if any file is unpaired")
    add_storage_flags(b)
    b.set_defaults(func=_build)

    v = msub.add_parser("validate", help="check a manifest; exit status 1 when it has problems",
                        description="Check every row (ids, URIs, masks, values) and the objects "
                        "of all rows or a sample (there, decodable, mask the image's size); "
                        "suspicious masks are listed as warnings (docs/masks.md).", **examples(
        "batch-inpaint manifest validate manifest.parquet",
        "batch-inpaint manifest validate s3://b/manifest.parquet --sample 1000 --report bad.csv",
        "batch-inpaint manifest validate ids.parquet --detect 'watermark'    # rows without masks",
    ))  # fmt: skip
    v.add_argument("uri", help="manifest URI, or shards (a folder, pattern or .shards.json)")
    v.add_argument("--sample", type=int, help="check objects of N random rows only (shards: "
                   "read N random shards)")  # fmt: skip
    v.add_argument("--no-objects", action="store_true", help="check rows only, fetch nothing")
    v.add_argument("--decode", action="store_true", help="decode images fully, not headers")
    v.add_argument("--workers", type=int, default=32,
                   help="concurrent object checks (default: %(default)s)")  # fmt: skip
    v.add_argument("--limit", type=int, default=50, help="problems listed (default: %(default)s)")
    v.add_argument("--report", help="also write every problem to this Parquet/CSV URI")
    v.add_argument("--detect", metavar="QUERIES",
                   help="as `run --detect`: what the job will detect in every row, e.g. "
                   "'watermark,text'; rows without a mask of their own are then fine (a row's "
                   "`detect` column is always read)")  # fmt: skip
    from batch_inpaint.cli.flags import add_flag
    from batch_inpaint.params import MaskOptions

    g = v.add_argument_group("reading masks (as `run` reads them; suspicious ones are flagged)")
    for f in MaskOptions.__dataclass_fields__.values():
        if f.name in ("threshold", "invert"):
            add_flag(g, f)
    add_shard_flags(v, sources=False)
    add_storage_flags(v)
    v.set_defaults(func=_validate)

    s = msub.add_parser("show", help="print a manifest's schema and first rows", **examples(
        "batch-inpaint manifest show manifest.parquet",
        "batch-inpaint manifest show s3://b/manifests/ -n 3",
    ))  # fmt: skip
    s.add_argument("uri", help="manifest URI")
    s.add_argument("-n", type=int, default=10, help="rows to print (default: %(default)s)")
    add_storage_flags(s)
    s.set_defaults(func=_show)


def _build(args: argparse.Namespace) -> int:
    from batch_inpaint.errors import ConfigError
    from batch_inpaint.manifest.manifest import Manifest

    storage = storage_from_args(args)
    given = [f for f in ("images", "webdataset", "parquet_dataset") if getattr(args, f)]
    if len(given) != 1:
        raise ConfigError("give one of --images, --webdataset, --parquet-dataset")
    if not args.images:
        return _build_shards(args, storage)
    queries = None if args.detect is None else ",".join(_queries(args.detect))
    if queries and args.masks is None and not args.mask_from_alpha:
        m = _images_only(args.images, storage, queries, args.prompt)
    else:
        m = Manifest.from_prefix(
            args.images,
            args.masks,
            mask_pattern=args.mask_pattern,
            mask_from_alpha=args.mask_from_alpha,
            prompt=args.prompt,
            storage=storage,
        )
        if queries:  # detections united with each row's own mask (docs/masks.md)
            m = Manifest(m.table.append_column("detect", pa_strings([queries] * len(m))),
                         m.storage, m.unpaired)  # fmt: skip
    m.write(args.output, rows_per_file=args.rows_per_file)
    print(f"wrote {len(m)} rows to {args.output}")
    if len(m.unpaired):
        print(f"unpaired: {m.unpaired}", file=sys.stderr)
        return ExitCode.INCOMPLETE if args.strict else ExitCode.OK
    return ExitCode.OK


def _build_shards(args: argparse.Namespace, storage: Any) -> int:
    """A shard list file (manifest/shard_set.py): which shards, so a run, its dry run and
    `manifest validate` read the same ones."""
    from batch_inpaint.manifest.manifest import Manifest

    if args.webdataset:
        found = Manifest.from_webdataset(args.webdataset, args.mask_member, storage=storage)
    else:
        found = Manifest.from_parquet_dataset(
            args.parquet_dataset,
            args.image_column,
            args.mask_column,
            args.id_column,
            storage=storage,
        )
    written = found.write(args.output)
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in written.config().items() if k != "manifest"]
    print(f"wrote a list of {len(found)} {found.format} shards to {args.output}")
    command = ["batch-inpaint run --manifest", args.output, *flags, "--output OUT --dry-run"]
    print("check it:", " ".join(command))
    return ExitCode.OK


def pa_strings(values: list) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def _images_only(images: str, storage: Any, queries: str, prompt: str | None) -> Any:
    """A row per image under `images`, with no mask and `detect` set to `queries`: the job (or
    `batch-inpaint detect`) finds each row's mask from them."""
    from batch_inpaint.errors import ManifestError
    from batch_inpaint.manifest.manifest import Manifest
    from batch_inpaint.manifest.pairing import IMAGE_EXTENSIONS, pair_files
    from batch_inpaint.storage.uri import is_local, local_path, redact_uri

    found = storage.list(images, suffixes=IMAGE_EXTENSIONS)
    if not found:
        raise ManifestError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {redact_uri(images)}")
    root = local_path(images) if is_local(images) else images
    rows, _ = pair_files(found, root, None, None, "{stem}.*")
    for row in rows:
        row["detect"] = queries
        if prompt is not None:
            row["prompt"] = prompt
    return Manifest.from_records(rows, storage)


def _validate(args: argparse.Namespace) -> int:
    from batch_inpaint.manifest.shard_set import find_shard_set
    from batch_inpaint.manifest.validation import validate_table
    from batch_inpaint.storage.credentials import check_credentials

    storage = storage_from_args(args)
    check_credentials(storage.options, [args.uri])  # one message, not one per row
    queries = [] if args.detect is None else _queries(args.detect)
    shards = find_shard_set(args.uri, storage, **_shard_keys(args))
    if shards is not None:
        from batch_inpaint.job.io.shard_check import validate_shards

        report = validate_shards(shards, sample=args.sample, decode=args.decode, queries=queries,
                                 mask_options=_mask_options(args))  # fmt: skip
    else:
        m = read_manifest(args.uri, storage, needs_mask=not queries)
        report = validate_table(m.table, m.storage, check_objects=not args.no_objects,
                                sample=args.sample, decode=args.decode, max_workers=args.workers,
                                base=m.base, queries=queries, mask_options=_mask_options(args))  # fmt: skip
    print(report.format(limit=args.limit))
    if args.report:
        _write_report(report.to_table(), args.report, storage)
    return ExitCode.OK if report.ok else ExitCode.INCOMPLETE


def _mask_options(args: argparse.Namespace) -> Any:
    """The mask options validate reads masks with (its flags; the others at their defaults)."""
    from batch_inpaint.cli.flags import options_from_args
    from batch_inpaint.params import MaskOptions

    unset = {"dilate": None, "feather": None, "mask_resize": None}
    return options_from_args(MaskOptions, argparse.Namespace(**{**unset, **vars(args)}))


def _queries(value: str) -> list[str]:
    """--detect's queries, by run's rule (an empty value is refused, as by run)."""
    from batch_inpaint.detect.options import DetectionOptions
    from batch_inpaint.errors import ConfigError
    from batch_inpaint.option import OptionError

    try:
        return DetectionOptions(detect=value).detect
    except OptionError as exc:
        raise ConfigError(f"--detect {exc.reason}") from None


def read_manifest(uri: str, storage: Any, needs_mask: bool) -> Any:
    """The manifest; with queries for every row (needs_mask False) it may have no mask column,
    as `run --detect` accepts: then read as the job reads it, with an empty `detect` column.
    Used by `validate --detect` and `detect` (images without masks are what it is for)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from batch_inpaint.errors import ManifestError
    from batch_inpaint.manifest.manifest import Manifest
    from batch_inpaint.manifest.schema import DETECT_COLUMN, MASK_COLUMNS
    from batch_inpaint.storage.uri import manifest_base

    try:
        return Manifest.read(uri, storage)
    except ManifestError:
        if needs_mask:
            raise
        fs, path = storage.pyarrow_filesystem(uri)
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
        if any(n in table.column_names for n in (*MASK_COLUMNS, DETECT_COLUMN)):
            raise  # something else is wrong with it
    table = table.append_column(DETECT_COLUMN, pa.nulls(table.num_rows, pa.string()))
    return Manifest(table, storage, base=manifest_base(uri) or None)


def _write_report(table: Any, uri: str, storage: Any) -> None:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    if uri.endswith(".csv"):
        pacsv.write_csv(table, buf)
    else:
        pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


def _show(args: argparse.Namespace) -> int:
    from batch_inpaint.manifest.manifest import Manifest
    from batch_inpaint.manifest.schema import SCHEMA_VERSION, VERSION_KEY

    m = Manifest.read(args.uri, storage_from_args(args))
    version = (m.table.schema.metadata or {}).get(VERSION_KEY, str(SCHEMA_VERSION).encode())
    print(f"{args.uri}: {len(m)} rows, schema version {version.decode()}")
    for field in m.table.schema:
        print(f"  {field.name}: {field.type}")
    rows = m.head(args.n).table.to_pylist()
    if not rows:
        return ExitCode.OK
    names = m.table.column_names
    cells = [[_cell(r[c]) for c in names] for r in rows]
    widths = [max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if len(m) > len(rows):
        print(f"... {len(m) - len(rows)} more rows")
    return ExitCode.OK


def _cell(v: Any, width: int = 48) -> str:
    from batch_inpaint.storage.uri import redact_uri

    s = "" if v is None else redact_uri(v) if isinstance(v, str) and "://" in v else str(v)
    half = width // 2
    return s if len(s) <= width else s[: half - 1] + "…" + s[-half:]  # keep the file name
