"""The Ray Serve application: one deployment, a hardened FastAPI ingress that holds a batched, multiplexed model.

    serve run serve.app:app model_uri=models:/facemask-detector@champion
    serve deploy serve/config.yaml
    facemask serve --model-uri models:/facemask-detector@champion

Each replica checks every request (API key, body size, format, pixel count, parameters; see
`request_checks`), so nothing malformed reaches the model; answers follow `api_schema`. It
gathers concurrent requests into one model call (`facemask.serving.batching`, in place of `@serve.batch`)
and keeps up to three registry versions loaded per replica (`@serve.multiplexed`), chosen per
request with the `serve_multiplexed_model_id` header (a version number or an alias; default:
the app's model).

    config      AppArgs: the application's arguments, defaults from ServeConfig
    http        the FastAPI app, its error shape, the key check, the page
    models      which model answers: the default, a named version or alias, the alias followed
    inference   one image through the replica: admission, checks, decoding, the batch, the answer
    deployment  the deployment (FacemaskServer) and build_app, app (Serve's builder)
    live/       the /live WebSocket: newest frame wins, ByteTrack per stream, people per mask state
    batching, request_checks, api_schema   requests gathered into one call, their checks, the answers' shape
    proxy_guard, haproxy_guard             the ingresses' own answers kept in the API's JSON
    simulated_gpu                          a stand-in accelerator for capacity tests
    client      Client(url).predict(...) for scripts: retries through restarts
    pages, web/ the pages served (the endpoint's, the watch's grid and review), the class map filled in
    production  what the endpoint gives back to learning: sampled images (--sampling) and drift
"""

from facemask import public_parts

# Imported on first use: `facemask --help` and the client must not load Ray, FastAPI or torch.
__getattr__, __all__ = public_parts(
    __name__,
    {
        "AppArgs": "config",
        "FacemaskServer": "deployment",
        "app": "deployment",
        "build_app": "deployment",
        "with_serve_env": "deployment",
        "Client": "client",
    },
)
