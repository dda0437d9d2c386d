"""Which model answers a request: the app's default, a version or alias a request names, and the
default's alias followed in the background (`rollout`: its holder, and a canary's challenger
with its share) so a promotion, a canary or a rollback is served without a redeploy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from facemask.core.errors import ModelNotFoundError, TrackingUnavailableError
from facemask.core.modelref import model_uri_for, parse_models_uri
from facemask.detection.detector import load_detector
from facemask.quality.rollout import Traffic, traffic
from facemask.serving.api_schema import MULTIPLEX_HEADER, APIError
from facemask.serving.request_checks import check_model_id
from facemask.serving.simulated_gpu import NAME as SIMULATED
from facemask.tracking import list_versions, model_version

log = logging.getLogger("facemask.serving")

# A version or alias the registry said it does not hold is answered 404 from memory for this
# long (a client asking for it in a loop costs one registry call per period, not three a request).
MISSING_TTL_S = 30.0
MISSING_KEPT = 1024  # model ids remembered as missing, oldest forgotten first
# Registry calls (and the version loads they lead to) have threads of their own: a slow
# registry then holds up the requests that name a version, never the model calls of the rest.
REGISTRY_THREADS = 2


class Models:
    """A replica's models. `load_version` is the replica's multiplexed loader (Serve keeps up to
    three versions per replica and routes a request to one that holds its version)."""

    def __init__(self, args, default, device: str, load_version: Callable[[str], Awaitable]) -> None:
        self.args, self.default, self.device = args, default, device
        self.load_version = load_version
        self.aliases: dict[str, tuple[float, str]] = {}  # alias -> (looked up at, version)
        self.default_checked = time.monotonic()
        self.refreshing: asyncio.Task | None = None
        # A canary: the challenger's model and its share of the default traffic, in percent.
        self.challenger, self.percent = None, 0.0
        self.defaults_served = 0
        self.missing: OrderedDict[str, tuple[float, str]] = OrderedDict()  # model id -> (until, message)
        self.registry_calls = 0  # lookups sent to the registry (the negative cache's test reads it)
        self.pool = ThreadPoolExecutor(REGISTRY_THREADS, thread_name_prefix="registry")

    async def registry(self, fn, *args):
        """`fn(*args)` on the registry's own threads."""
        self.registry_calls += 1
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def version(self, model_id: str):
        """The loaded model of a version number: the default's when it is that version."""
        ref = model_uri_for(model_id, self.args.model_uri)
        mv = await self.registry(model_version, ref, self.args.tracking_uri)
        if self.default.info.name == mv.name and self.default.info.version == str(mv.version):
            return self.default
        return await self.registry(self.load_registered, mv.name, mv.version)

    def load_registered(self, name: str, version: str | int):
        """One registered version, loaded the way this replica serves its default."""
        args = self.args
        return load_detector(
            f"models:/{name}/{version}",
            self.device,
            args.backend,
            args.threads,
            warm=True,
            tracking_uri=args.tracking_uri,
        )

    async def for_id(self, model_id: str):
        """The model a version number or alias names (checked), else the app's default.
        APIError 404 when the registry holds no such version (remembered MISSING_TTL_S), 503
        when the registry cannot be asked."""
        model_id = check_model_id(model_id.strip())
        if self.args.backend == SIMULATED:  # a simulated accelerator has no versions
            return self.default
        if not model_id:
            self.follow_default_alias()
            return self.default_or_challenger()
        known_missing = self.missing.get(model_id)
        if known_missing is not None and known_missing[0] > time.monotonic():
            raise APIError(404, "model_not_found", known_missing[1])
        try:
            version = model_id if model_id.isdigit() else await self.alias_version(model_id)
            return await self.load_version(version)
        except ModelNotFoundError as exc:
            # The registry's address (a server, or a database path) is for the operator's logs, not for clients.
            store = self.args.tracking_uri
            message = str(exc).replace(store, "the registry") if store else str(exc)
            self.missing[model_id] = (time.monotonic() + MISSING_TTL_S, message)
            self.missing.move_to_end(model_id)
            while len(self.missing) > MISSING_KEPT:
                self.missing.popitem(last=False)
            raise APIError(404, "model_not_found", message) from None
        except TrackingUnavailableError as exc:
            log.warning("model %r: %s (%s)", model_id, exc, exc.__cause__)
            raise APIError(
                503,
                "registry_unavailable",
                f"the model registry could not be asked for {model_id!r}; retry shortly, "
                f"or send no {MULTIPLEX_HEADER} header for the default model",
                headers={"Retry-After": "5"},
            ) from None

    async def versions(self) -> dict:
        """GET /models: the registered versions of the app's model, or why there are none. A
        registry that does not answer is said in one line without its address or its error's
        text (both are for the operator's log)."""
        ref = self.args.model_uri
        if not ref.startswith("models:/"):
            return {"default": ref, "versions": [], "registry_error": "serving a local file, not a registry model"}
        try:
            versions = await self.registry(list_versions, parse_models_uri(ref)[0], self.args.tracking_uri)
        except Exception as exc:  # an unreachable registry must not break the page
            log.warning("GET /models: the registry did not answer: %s", exc)
            return {
                "default": ref,
                "versions": [],
                "registry_error": f"the registry did not answer ({type(exc).__name__})",
            }
        return {"default": ref, "versions": versions}

    def default_or_challenger(self):
        """The default model, or during a canary the challenger for exactly its share of this
        replica's default requests: the n-th goes to the challenger when floor(n * P / 100) steps up."""
        if self.challenger is None:
            return self.default
        n, share = self.defaults_served + 1, self.percent / 100
        self.defaults_served = n
        return self.challenger if int(n * share) > int((n - 1) * share) else self.default

    async def alias_version(self, alias: str) -> str:
        """The version an alias names, looked up at most every refresh_s (the registry is a network call)."""
        looked_up, version = self.aliases.get(alias, (0.0, ""))
        if not version or (self.args.refresh_s and time.monotonic() - looked_up > self.args.refresh_s):
            ref = model_uri_for(alias, self.args.model_uri)
            mv = await self.registry(model_version, ref, self.args.tracking_uri)
            version = str(mv.version)
            self.aliases[alias] = (time.monotonic(), version)
        return version

    def follow_default_alias(self) -> None:
        """Every refresh_s, in the background: if the app's alias moved, load the new version and swap it in."""
        ref = self.args.model_uri
        if (
            not self.args.refresh_s
            or "@" not in ref
            or not ref.startswith("models:/")
            or self.refreshing is not None
            or time.monotonic() - self.default_checked < self.args.refresh_s
        ):
            return
        self.refreshing = asyncio.get_running_loop().create_task(self._refresh(ref.split("@", 1)[1]))

    async def _refresh(self, alias: str) -> None:
        try:
            name = self.default.info.name
            state = await self.registry(traffic, name, alias, self.args.tracking_uri)
            if state.holder and state.holder != self.default.info.version:
                loaded = await self.registry(self.load_registered, name, state.holder)
                log.info("%s moved from version %s to %s; now serving %s", self.args.model_uri,
                         self.default.info.version, state.holder, state.holder)  # fmt: skip
                self.default = loaded
            await self.follow_canary(name, state)
        except Exception as exc:  # a registry outage must not stop serving the loaded model
            log.warning(
                "could not look up %s (%s); still serving version %s",
                self.args.model_uri,
                exc,
                self.default.info.version,
            )
        finally:
            self.default_checked = time.monotonic()
            self.refreshing = None

    async def follow_canary(self, name: str, state: Traffic) -> None:
        """Load a new challenger before it takes its share; drop it when the canary ends."""
        if state.challenger is None:
            if self.challenger is not None:
                log.info("the canary of version %s ended", self.challenger.info.version)
            self.challenger, self.percent = None, 0.0
            return
        if self.challenger is None or self.challenger.info.version != state.challenger:
            self.challenger = await self.registry(self.load_registered, name, state.challenger)
            self.defaults_served = 0
            log.info("canary: version %s takes %g%% of the default traffic", state.challenger, state.percent)
        self.percent = state.percent
