"""The Ray Serve application: one deployment, a hardened FastAPI ingress that holds a batched, multiplexed model.

    serve run serve.app:app model_uri=models:/facemask-detector@champion
    serve deploy serve/config.yaml
    facemask serve --model-uri models:/facemask-detector@champion

Each replica checks every request (API key, body size, format, pixel count, parameters; see
`request_checks`), so nothing malformed reaches the model; answers follow `api_schema`. It
gathers concurrent requests into one model call (`facemask.batching`, in place of `@serve.batch`)
and keeps up to three registry versions loaded per replica (`@serve.multiplexed`), chosen per
request with the `serve_multiplexed_model_id` header (a version number or an alias; default:
the app's model).

    config      AppArgs: the application's arguments, defaults from ServeConfig
    http        the FastAPI app, its error shape, the key check, the page
    models      which model answers: the default, a named version or alias, the alias followed
    inference   one image through the replica: admission, checks, decoding, the batch, the answer
    deployment  the deployment (FacemaskServer) and build_app, app (Serve's builder)
"""

from facemask.serving.config import AppArgs
from facemask.serving.deployment import FacemaskServer, app, build_app, with_serve_env

__all__ = ["AppArgs", "FacemaskServer", "app", "build_app", "with_serve_env"]
