"""Schema fuzzing of the covidct serve API with schemathesis: every documented operation, no 5xx answer."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

pytestmark = pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning")


@pytest.fixture(scope="module")
def api_schema(served, tmp_path_factory):
    from covidct.serve.app import create_app

    folder = tmp_path_factory.mktemp("fuzz-requests")
    app = create_app(served, max_upload_mb=1, tmp_root=folder)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    assert list(folder.iterdir()) == []  # no upload left behind by any fuzzed request


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_error(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    sniffing = response.headers.get("x-content-type-options")
    assert sniffing in ("nosniff", ["nosniff"])
