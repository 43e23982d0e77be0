"""The ``covidct serve`` subcommand: argument declaration and the call that starts uvicorn.

``covidct.cli`` registers it with one line, ``add_parser(subparsers)``. Nothing heavy is imported until the
command runs, so ``covidct --help`` stays fast.
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("covidct.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> None:
    """Declare ``covidct serve`` on the main parser's ``subparsers``."""
    from covidct.serve import DEFAULT_MAX_UPLOAD_MB

    parser = subparsers.add_parser(
        "serve", help="local web page + JSON API: predictions, Grad-CAM and lung focus of one run",
        description="Serve one finished run on a local web page and a JSON API (POST /api/predict, GET /api/model, "
        "GET /healthz). Uploads are processed in memory and temporary files, never kept. No authentication: "
        "it binds to 127.0.0.1 unless --host says otherwise. Research software, not a diagnostic device.",
    )
    parser.add_argument("--run", required=True, help="finished run folder of a 2-D slice classifier")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest upload in MB (default {DEFAULT_MAX_UPLOAD_MB}); larger ones get 413")
    parser.add_argument("--workers", type=int, default=1, help="predictions running at once (default 1)")
    parser.add_argument("--queue", type=int, default=8,
                        help="requests waiting beyond the running ones before 503 + Retry-After (default 8)")
    parser.set_defaults(func=run_serve)


def run_serve(args) -> int:
    """Load the run, build the app and run uvicorn until interrupted."""
    import uvicorn

    from covidct import DISCLAIMER
    from covidct.serve.app import create_app
    from covidct.serve.served_run import load_served_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.host not in LOOPBACK:
        LOGGER.warning(
            "binding to %s: anyone who can reach this address can use the server; there is NO authentication and "
            "no TLS. Prefer 127.0.0.1 (the default) or a tunnel you control.", args.host)
    run = load_served_run(args.run)
    app = create_app(run, max_upload_mb=args.max_upload_mb, workers=args.workers, queue=args.queue)
    warm_up(run)
    reference = run.reference.source or f"unavailable ({run.reference.unavailable})"
    print(f"covidct serve: run {run.run_dir} ({run.model_name}, classes {', '.join(run.class_names)}); "
          f"OOD reference: {reference}", flush=True)
    print(f"covidct serve: http://{args.host}:{args.port}/  ({DISCLAIMER})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def warm_up(run) -> None:
    """One prediction and one Grad-CAM on a blank sample, so that the first request does not pay the tracing."""
    import numpy as np

    from covidct.explain.gradcam import compute_cams
    from covidct.models.inference import split_inputs

    shape = tuple(int(s) for s in run.model.inputs[0].shape[1:3])
    channels = sum(int(t.shape[-1]) for t in run.model.inputs)
    sample = np.zeros((1,) + shape + (channels,), np.float32)
    compute_cams(run.model, split_inputs(sample, run.input_names), model_name=run.model_name)
