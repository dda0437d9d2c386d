"""The Ray Serve entry point of facemask.

    serve run serve.app:app model_uri=models:/facemask-detector@champion
    serve run serve.app:app model_uri=runs/train/exp/weights/best.pt     # air-gapped: a local file
    serve deploy serve/config.yaml                                       # a cluster (see docs/jobs-and-clusters.md)

Any field of `facemask.serving.AppArgs` can be given as key=value. The one deployment
(a FastAPI ingress holding a batched, multiplexed detector) lives in `facemask.serving`, so
an installed package serves the same app without this folder.
"""

from facemask.serving import AppArgs, app, build_app

__all__ = ["app", "AppArgs", "build_app"]
