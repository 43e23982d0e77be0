"""``covidct serve``: a local web page and JSON API that explain one run's predictions on uploaded images.

Layout:

- ``limits``: the upload and image limits (size, pixels, voxels, archive members) and content sniffing;
- ``uploads``: streaming an upload to a private temporary folder (stopped at the size limit) and reading it
  into a ``CTImage`` (type decided by content, never by the client's file name);
- ``served_run``: the run folder loaded once (model, stage, size, classes, threshold, aggregation, scores,
  training-set intensity statistics for the out-of-distribution check);
- ``predict``: slice and volume predictions with Grad-CAM, lung mask, lung focus and the OOD check;
- ``app``: the FastAPI application (``create_app``): routes, worker pool, queue limit, security headers;
- ``cli``: the ``covidct serve`` subcommand.

Nothing here imports FastAPI at package import time, so ``covidct --help`` stays fast.

Research software, not a diagnostic device.
"""

#: Largest upload in MB (``covidct serve --max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 64
