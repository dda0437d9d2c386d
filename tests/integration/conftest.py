"""Fixtures shared by the integration tests of the endpoint (test_serve, test_live)."""

from __future__ import annotations

import pytest

from tests.services import API_KEY, DEPLOYMENT, LIMITS, free_port


@pytest.fixture(scope="module")
def endpoint(ray_local, registered_detector, tmp_path_factory):
    """Two apps on one Serve proxy: `/` open, `/secured` with FACEMASK_API_KEY set at build time
    and sampling on (every answered image kept, faces blurred, into `samples`)."""
    from ray import serve

    from facemask.serving import build_app

    port = free_port()
    samples = tmp_path_factory.mktemp("endpoint-samples")
    args = {
        "model_uri": f"models:/{registered_detector['name']}@champion",
        "max_batch_size": 4,
        "tracking_uri": registered_detector["tracking_uri"],
        "deployment_options": DEPLOYMENT,
        "refresh_s": 1.0,
        **LIMITS,
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(args), name="facemask", route_prefix="/")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FACEMASK_API_KEY", API_KEY)
            sampling = {"faces": "blur", "random_share": 1.0, "per_hour": 100_000}
            secured = {**args, "sampling": sampling, "samples_dir": str(samples)}
            serve.run(build_app(secured), name="secured", route_prefix="/secured")
        yield {"url": f"http://127.0.0.1:{port}", "samples": samples, **registered_detector}
    finally:
        serve.shutdown()
