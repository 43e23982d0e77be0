"""Fixtures of the serve tests: one tiny phantom-trained run (session-scoped), its app, and sample uploads.

The run: small_cnn, 1 epoch at 48 px on the shared phantom slices (tests/conftest.py), labels mapped to the
binary COV / NonCOV, evaluated on its test split with a decision threshold of 0.4 (metrics_test.json), on its
validation split (metrics_val.json) and on a relabelled copy as an "external" set. The model is weak; the tests
check what the server does with it, not how good it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serve_helpers import BINARY, CHROMIUM, THRESHOLD, free_port, phantom_slice, png_bytes


@pytest.fixture(scope="session")
def serve_run(phantom_data, tiny_config, tmp_path_factory, server_process) -> Path:
    import dataclasses

    from covidct.evaluate.evaluator import evaluate_run
    from covidct.train import train
    from covidct.train.data import apply_label_map, data_from_arrays

    manifest = apply_label_map(phantom_data.manifest, BINARY, source="phantom")
    data = data_from_arrays(phantom_data.images, manifest, classes=["COV", "NonCOV"], source="phantom")
    cfg = tiny_config(epochs=1, max_steps_per_epoch=4, bn_recalibration=0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="small_cnn"),
                              data=dataclasses.replace(cfg.data, classes=["COV", "NonCOV"]))
    run = train(cfg, run_dir=tmp_path_factory.mktemp("serve") / "phantom-small_cnn", data=data, progress=False)
    evaluate_run(run, split="test", data=data, n_bootstrap=0, figures=False, threshold=THRESHOLD)
    evaluate_run(run, split="val", data=data, n_bootstrap=0, figures=False)
    external = data_from_arrays(phantom_data.images, manifest.assign(split="test"), classes=["COV", "NonCOV"])
    evaluate_run(run, dataset="phantom-copy", data=external, n_bootstrap=0, figures=False)
    if server_process is not None:  # the waiting interpreter now runs `covidct serve --run <run> --port <port>`
        import json

        server_process["process"].stdin.write(json.dumps(["serve", "--run", str(run), "--port", server_process["port"]]) + "\n")
        server_process["process"].stdin.close()
    return run


@pytest.fixture(scope="session")
def served(serve_run, phantom_data):
    """The loaded run, with the OOD reference taken from its training images (the run has no cache)."""
    from covidct.serve.served_run import load_served_run, reference_from_samples

    run = load_served_run(serve_run)
    train_rows = phantom_data.indices("train")
    run.reference = reference_from_samples(np.asarray(phantom_data.images[train_rows]), "phantom training images")
    return run


@pytest.fixture
def upload_tmp(tmp_path) -> Path:
    folder = tmp_path / "requests"
    folder.mkdir()
    return folder


@pytest.fixture
def client(served, upload_tmp):
    from fastapi.testclient import TestClient

    from covidct.serve.app import create_app

    with TestClient(create_app(served, max_upload_mb=1, tmp_root=upload_tmp)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def cov_png() -> bytes:
    return png_bytes(phantom_slice("COV"))


# An interpreter that imports what `covidct serve` needs, then runs the command line it reads from stdin.
PREWARMED = ("import json, sys; import tensorflow, keras, fastapi, uvicorn; import covidct.serve.app, covidct.serve.served_run; "
             "from covidct.cli import main; argv = json.loads(sys.stdin.readline()); sys.exit(main(argv))")


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    """``covidct serve`` for the browser test, as a subprocess on a free loopback port (None without chromium).

    Started before the run is trained: the subprocess imports TensorFlow, FastAPI and covidct.serve meanwhile, and
    ``serve_run`` then hands it the command line ``serve --run <run> --port <port>`` (``covidct.cli.main``, the
    console script's entry point), so the server's start overlaps with training instead of adding to the test time.
    """
    import os
    import subprocess
    import sys

    if not CHROMIUM.exists():
        yield None
        return
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", PREWARMED], stdin=subprocess.PIPE, stdout=sink,
                                   stderr=subprocess.STDOUT, env=env, text=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": str(port), "process": process, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
