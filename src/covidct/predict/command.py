"""The ``covidct predict`` subcommand (registered by ``covidct.cli`` with one line)."""

from __future__ import annotations


def add_predict(subparsers) -> None:
    """Declare ``covidct predict``."""
    parser = subparsers.add_parser(
        "predict", help="class probabilities of many slice images, in resumable shards (local or Dask)",
        description="Predict every slice image of folders, manifests or DICOM series with a trained 2-D run. "
        "Results are written in shards under --out; a rerun skips finished shards.")
    parser.add_argument("--run", required=True, help="a finished 2-D classification run folder")
    parser.add_argument("sources", nargs="*", help="image files or folders (searched recursively)")
    parser.add_argument("--manifest", action="append", default=[], metavar="CSV",
                        help="a CSV with a 'path' column (repeatable)")
    parser.add_argument("--dicom-series", action="append", default=[], metavar="DIR",
                        help="a DICOM series folder, one row per slice file (repeatable)")
    parser.add_argument("--out", required=True, help="output folder (predict.json, shards/)")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per shard and task (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="images read and predicted at a time")
    parser.add_argument("--executor", default="local", help="local, dask (a LocalCluster) or dask:ADDRESS")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (dask)")
    parser.add_argument("--format", default="csv", choices=["csv", "parquet"], help="shard files (parquet: pyarrow)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier prediction folder at --out")
    parser.set_defaults(func=run_predict)


def run_predict(args) -> int:
    """Run ``covidct predict``; prints one summary line."""
    from covidct.errors import CovidctError
    from covidct.predict.batch import predict_batch

    if not (args.sources or args.manifest or args.dicom_series):
        raise CovidctError("covidct predict: give image files or folders, --manifest CSV or --dicom-series DIR.")
    summary = predict_batch(args.run, args.out, args.sources, args.manifest, args.dicom_series,
                            shard_size=args.shard_size, batch_size=args.batch_size, executor=args.executor,
                            workers=args.workers, fmt=args.format, overwrite=args.overwrite)
    print(f"{summary['rows']} images in {summary['shards']} shards under {summary['out']}/shards: "
          f"{summary['written']} written, {summary['skipped']} already complete ({summary['seconds']} s)")
    return 0
