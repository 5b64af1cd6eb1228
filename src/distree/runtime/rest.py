"""The Open Inference Protocol over HTTP/REST on node 1 (aiohttp, in the node's own event loop).

Served when the spec sets ``http_port``, on node 1's listen host, with TLS (mutual TLS when
``client_auth``) from the spec's ``[tls]``. Endpoints (``{m}`` the model, ``[/versions/{v}]``
optional everywhere a model is named):

    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready
    GET  /v2/models/{m}[/versions/{v}]/config        model configuration (Triton)
    GET  /v2/models[/{m}[/versions/{v}]]/stats       statistics (Triton)
    POST /v2/repository/index                        repository index (Triton)
    POST /v2/models/{m}[/versions/{v}]/infer         JSON tensors and/or binary tensor data

Errors are the protocol's ``{"error": "..."}`` objects: 400 malformed request, 404 unknown model,
version or endpoint, 405 wrong method, 413 body over ``max_message_bytes``, 503 not ready. The
handlers only translate HTTP: validation, inference and statistics are the data plane's.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .oip import BadRequest, NotFound, OipError, TooLarge
from .rest_codec import HEADER_LENGTH, decode_request, encode_response

if TYPE_CHECKING:
    from .dataplane import DataPlane
    from .spec import ClusterSpec

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=json.dumps({"error": message}).encode(), status=status, content_type="application/json")


def _json(obj: Any) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), content_type="application/json")


def http_host(spec: ClusterSpec) -> str:
    """The host node 1's HTTP endpoint binds to: that of its gRPC ``listen`` address."""
    return spec.nodes[0].listen.rpartition(":")[0].strip("[]")


def http_url(spec: ClusterSpec) -> str:
    """Where a client reaches node 1 over HTTP: ``http[s]://<node 1's address host>:<http_port>``."""
    host = spec.nodes[0].address.rpartition(":")[0]
    return f"{'https' if spec.tls is not None else 'http'}://{host}:{spec.http_port}"


def server_ssl_context(spec: ClusterSpec) -> ssl.SSLContext | None:
    """Node 1's certificate; with ``client_auth`` callers must present one signed by the spec's CA."""
    if spec.tls is None:
        return None
    node = spec.nodes[0]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(node.cert), str(node.key))
    if spec.tls.client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(spec.tls.ca))
    return ctx


class RestServer:
    """Node 1's HTTP/REST endpoint over a :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, spec: ClusterSpec, *, grace_s: float = 10.0) -> None:
        self.plane = plane
        self.spec = spec
        self.grace_s = grace_s
        self.max_body = spec.max_message_bytes
        self._runner: web.AppRunner | None = None
        from .auth import AccessControl

        core = plane.core

        def refused(code: str, reason: str) -> None:
            core.metrics.rejected.labels(node=core.metrics.node, code=code).inc()

        self.access = AccessControl(spec, 1, on_refusal=refused)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors, self._admit])
        r = app.router
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/models/stats", self.stats)
        r.add_post("/v2/repository/index", self.repository_index)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_get(base + "/config", self.model_config)
            r.add_get(base + "/stats", self.stats)
            r.add_post(base + "/infer", self.infer)
        return app

    async def start(self) -> None:
        host, port = http_host(self.spec), self.spec.http_port
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=self.grace_s)
        await runner.setup()
        site = web.TCPSite(runner, host or None, port, ssl_context=server_ssl_context(self.spec))
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"node 1 could not serve HTTP on {host}:{port} ({e}); pick another http_port") from e
        self._runner = runner
        log.info("HTTP/REST on %s:%d", host, port, extra={"event": "http", "port": port})

    async def stop(self) -> None:
        """Stop accepting connections and wait for the requests in flight (up to the runner's timeout)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ errors
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OipError as e:
            return _error(e.http, str(e))
        except web.HTTPException as e:
            if e.status == 404:
                return _error(404, f"no endpoint {request.method} {request.path}; see docs/runtime.md for the list")
            if e.status == 405:
                return _error(405, f"{request.path} does not take {request.method}")
            if e.status == 413:
                return _error(413, f"the request body is over the limit of {self.max_body} bytes (max_message_bytes)")
            return _error(e.status, e.reason)
        except Exception as e:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {e}")

    @web.middleware
    async def _admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The inference service's access rule (bearer tokens, certificate roles); health stays open."""
        if request.path.startswith("/v2/health/"):
            return await handler(request)
        metadata = {"authorization": request.headers.get("Authorization", "").encode()}
        peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
        identities = [v for k, v in (peer or {}).get("subjectAltName", ()) if k == "URI"]
        verdict = self.access.decide("/inference.GRPCInferenceService/ModelInfer", metadata, identities)
        if verdict is None:
            return await handler(request)
        code, reason = verdict
        self.access.refused(code, reason, request.remote or "?")
        if code == "UNAUTHENTICATED":
            resp = _error(401, reason)
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return _error(403, reason)

    # ------------------------------------------------------------------ health and metadata
    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        if not self.plane.ready:
            return _error(503, "the server is not ready (starting or shutting down)")
        return _json({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(self.plane.server_metadata())

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def model_metadata(self, request: web.Request) -> web.Response:
        return _json(self.plane.model_metadata(*self._model(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        self.plane.resolve(name, version)
        if not self.plane.model_ready(name, version):
            return _error(503, f"model {name!r} is not ready (the server is starting or shutting down)")
        return _json({"name": name, "ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(self.plane.model_config(*self._model(request)))

    async def stats(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json(self.plane.statistics(name, version))

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ready = False
        if body.strip():
            try:
                obj = json.loads(body)
            except ValueError as e:
                raise BadRequest(f'the request body is not valid JSON ({e}); send {{}} or {{"ready": true}}') from None
            if not isinstance(obj, dict) or not isinstance(obj.get("ready", False), bool):
                raise BadRequest('the repository index request must be a JSON object like {"ready": true}')
            ready = obj.get("ready", False)
        return _json(self.plane.repository_index(ready))

    # ------------------------------------------------------------------ inference
    async def _body(self, request: web.Request) -> bytes:
        n = request.content_length
        if n is not None and n > self.max_body:
            raise TooLarge(f"the request body has {n} bytes, over the limit of {self.max_body} (max_message_bytes)")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"the request body is over the limit of {self.max_body} bytes (max_message_bytes)") from None

    async def infer(self, request: web.Request) -> web.Response:
        plane = self.plane
        arrival = plane.core.clock.monotonic()
        name, version = self._model(request)
        try:
            plane.resolve(name, version)
            req = decode_request(await self._body(request), request.headers.get(HEADER_LENGTH), name, version)
        except OipError as e:
            plane.reject(e, arrival, model_known=not isinstance(e, NotFound))
            raise
        resp = await plane.infer(req, arrival=arrival)
        body, head = encode_response(resp, bool(req.parameters.get("binary_data_output", False)))
        if head is None:
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=body, content_type="application/octet-stream", headers={HEADER_LENGTH: str(head)})
