"""Who may call what: a server interceptor that admits each RPC by the caller's identity or token
(and refuses requests that are not valid messages with INVALID_ARGUMENT).

Identities come from certificates (mutual TLS): the URI subject alternative name of
:func:`~distree.runtime.tls.identity_uri` — ``distree://node/K`` for the nodes of tier K,
``distree://client/NAME`` for inference clients, ``distree://operator/NAME`` for cluster tools. The
spec's ``[access]`` table says which roles each service admits:

- ``forward`` (``ChainNode/ForwardStream``, the node stream, and the unary ``ChainNode/Forward``)
  and ``info`` (``ChainNode/Info``): by default only the predecessor tier (node K-1 on node K);
  ``info`` also operators.
- ``inference`` (the Open Inference Protocol on node 1): by default clients and operators.

Role terms: ``predecessor``, ``node`` (any tier), ``client``, ``operator``, ``any`` (no check).

Without mutual TLS there are no identities: the internal RPCs then need the shared secret of
``token_file`` in the ``x-distree-token`` metadata (compared in constant time), unless every node
listens on loopback or ``allow_unauthenticated`` says otherwise. The inference service asks for a
bearer token (``authorization: Bearer ...``, one accepted token per line of ``client_tokens_file``)
when that file is given, with or without TLS. The health service is always open (probes use it).

A refusal is ``PERMISSION_DENIED`` (known caller, wrong role) or ``UNAUTHENTICATED`` (no valid
credential), counted in ``distree_rejected_total`` and logged once per caller and reason.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from .spec import _LOOPBACK, ClusterSpec, SpecError

log = logging.getLogger(__name__)

TOKEN_METADATA = "x-distree-token"
CHAIN_SERVICE = "distree.node.v1.ChainNode"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def read_tokens(path: Path | None, what: str) -> list[bytes]:
    """The non-empty, stripped lines of a token file (refused if readable by others)."""
    if path is None:
        return []
    try:
        mode = path.stat().st_mode
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise SpecError(f"cannot read {what} {path}: {e}") from e
    if mode & 0o077:
        raise SpecError(f"{what} {path} is readable by other users (mode {oct(mode & 0o777)}); chmod 600 {path}")
    tokens = [t.strip() for t in lines if t.strip()]
    if not tokens:
        raise SpecError(f"{what} {path} is empty; write one token per line")
    return tokens


def chain_token(spec: ClusterSpec) -> bytes | None:
    """The shared secret nodes send on internal calls, or None when the spec has no token file."""
    tokens = read_tokens(spec.access.token_file, "token file")
    return tokens[0] if tokens else None


def caller_identities(context: grpc.aio.ServicerContext) -> list[str]:
    """The ``distree://`` URIs of the caller's certificate (empty without mutual TLS)."""
    try:
        uris = context.auth_context().get("peer_uri", [])
    except Exception:  # noqa: BLE001 - no auth context on an insecure channel
        return []
    return [u.decode("utf-8", "replace") for u in uris if u.startswith(b"distree://")]


def role_matches(term: str, identity: str, k: int) -> bool:
    """Whether ``identity`` (a distree:// URI) is admitted by role ``term`` on node ``k``."""
    if term == "any":
        return True
    _, _, rest = identity.partition("://")
    role, _, name = rest.partition("/")
    if term == "predecessor":
        return role == "node" and name == str(k - 1)
    return role == term


class AccessControl(grpc.aio.ServerInterceptor):
    """Admit each call of node ``k``'s server per the spec's ``[access]`` table (see the module doc)."""

    def __init__(self, spec: ClusterSpec, k: int, on_refusal: Callable[[str, str], None] | None = None) -> None:
        self.spec = spec
        self.k = k
        acc = spec.access
        self.mtls = spec.tls is not None and spec.tls.client_auth
        self.chain_tokens = read_tokens(acc.token_file, "token file")
        self.client_tokens = read_tokens(acc.client_tokens_file, "client token file")
        loopback = all(n.listen.rsplit(":", 1)[0] in _LOOPBACK for n in spec.nodes)
        # internal RPCs with neither identities nor a token: only where nobody else can reach them
        self.internal_open = not self.mtls and not self.chain_tokens and (loopback or acc.allow_unauthenticated)
        self.rules: dict[str, Sequence[str]] = {"Forward": acc.forward, "ForwardStream": acc.forward, "Info": acc.info}
        self.on_refusal = on_refusal
        self._logged: dict[tuple[str, str], int] = {}

    # ---------------------------------------------------------------- decisions
    def decide(self, method: str, metadata: dict[str, bytes], identities: list[str]) -> tuple[str, str] | None:
        """None to admit, else (status code name, reason) — pure, for tests and the interceptor."""
        service, _, name = method.lstrip("/").partition("/")
        if service in OPEN_SERVICES:
            return None
        if service == CHAIN_SERVICE:
            return self._internal(name, metadata, identities)
        if service == INFERENCE_SERVICE:
            return self._inference(metadata, identities)
        return None  # unknown services answer UNIMPLEMENTED themselves

    def _internal(self, name: str, metadata: dict[str, bytes], identities: list[str]) -> tuple[str, str] | None:
        roles = self.rules.get(name, ["predecessor"])
        if "any" in roles or self.internal_open:
            return None
        if self.mtls:
            if any(role_matches(r, i, self.k) for r in roles for i in identities):
                return None
            who = ", ".join(identities) or "a certificate without a distree identity"
            return "PERMISSION_DENIED", f"{name} on node {self.k} admits {'/'.join(roles)}, not {who}"
        token = metadata.get(TOKEN_METADATA)
        if token is not None and any(hmac.compare_digest(token, t) for t in self.chain_tokens):
            return None
        return "UNAUTHENTICATED", f"{name} on node {self.k} needs the chain token ({TOKEN_METADATA} metadata)"

    def _inference(self, metadata: dict[str, bytes], identities: list[str]) -> tuple[str, str] | None:
        if self.client_tokens:
            auth = metadata.get("authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not any(
                hmac.compare_digest(token.strip(), t) for t in self.client_tokens
            ):
                return "UNAUTHENTICATED", "inference needs a valid bearer token (authorization: Bearer TOKEN)"
        if self.mtls:
            roles = self.spec.access.inference
            if "any" not in roles and not any(role_matches(r, i, self.k) for r in roles for i in identities):
                who = ", ".join(identities) or "a certificate without a distree identity"
                return "PERMISSION_DENIED", f"inference admits {'/'.join(roles)}, not {who}"
        return None

    # ---------------------------------------------------------------- interceptor
    def refused(self, code: str, reason: str, peer: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(code, reason)
        key = (code, reason)
        n = self._logged.get(key, 0) + 1
        self._logged[key] = n
        if n == 1 or n & (n - 1) == 0:  # once, then at 2, 4, 8, ... repeats
            log.warning(
                "refused a call from %s: %s %s%s",
                peer,
                code,
                reason,
                f" ({n} times so far)" if n > 1 else "",
                extra={"event": "refused", "code": code, "count": n},
            )

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service = details.method.lstrip("/").partition("/")[0]
        if handler is None or service not in (CHAIN_SERVICE, INFERENCE_SERVICE):
            return handler
        if not self._guards(service):
            return _guarded(handler, None, self._malformed)
        metadata = {
            m.key: m.value if isinstance(m.value, bytes) else m.value.encode()  # type: ignore[attr-defined]  # grpc stubs type aio metadata entries as tuples
            for m in details.invocation_metadata or ()
        }
        return _guarded(handler, lambda ctx: self._check(details.method, metadata, ctx), self._malformed)

    def _guards(self, service: str) -> bool:
        """Whether calls of ``service`` need an access check (everything is open on a trusted loopback)."""
        if service == CHAIN_SERVICE:
            return not self.internal_open
        if service == INFERENCE_SERVICE:
            return bool(self.client_tokens) or (self.mtls and "any" not in self.spec.access.inference)
        return False

    async def _malformed(self, e: Malformed, context: grpc.aio.ServicerContext) -> None:
        reason = f"the request is not a valid protobuf message ({e.error}); send it with the service's own stubs"
        if self.on_refusal is not None:
            self.on_refusal("INVALID_ARGUMENT", reason)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)

    async def _check(self, method: str, metadata: dict[str, bytes], context: grpc.aio.ServicerContext) -> None:
        verdict = self.decide(method, metadata, caller_identities(context))
        if verdict is not None:
            code, reason = verdict
            self.refused(code, reason, context.peer())
            await context.abort(getattr(grpc.StatusCode, code), reason)


class Malformed:
    """What a request that does not parse becomes: the handler refuses it with INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN and log a traceback)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # noqa: BLE001 - DecodeError and friends: the caller's bytes are not a message
            return Malformed(e)

    return parse


def _guarded(
    handler: grpc.RpcMethodHandler,
    check: Callable[[Any], Any] | None,
    malformed: Callable[[Malformed, Any], Any],
) -> grpc.RpcMethodHandler:
    """``handler`` whose unary requests that do not parse are refused, with ``await check(context)``
    (when given) before its behaviour runs. Streamed requests keep the handler's own parsing."""
    ser = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def uu(request: Any, context: Any) -> Any:
            if check is not None:
                await check(context)
            if isinstance(request, Malformed):
                await malformed(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            uu, request_deserializer=_safe(handler.request_deserializer), response_serializer=ser
        )
    if check is None:
        return handler
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": ser}
    if handler.stream_stream is not None:
        inner_ss: Any = handler.stream_stream  # async in grpc.aio; the stubs type the sync behaviour

        async def ss(requests: Any, context: Any) -> Any:
            await check(context)
            res = inner_ss(requests, context)
            if inspect.isasyncgen(res):
                async for r in res:
                    yield r
            else:
                await res

        return grpc.stream_stream_rpc_method_handler(ss, **kw)
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream  # async in grpc.aio; the stubs type the sync behaviour

        async def us(request: Any, context: Any) -> Any:
            await check(context)
            async for r in inner_us(request, context):
                yield r

        return grpc.unary_stream_rpc_method_handler(us, **kw)
    inner_su = handler.stream_unary
    assert inner_su is not None  # a handler has exactly one behaviour; the other three are checked above

    async def su(requests: Any, context: Any) -> Any:
        await check(context)
        return await inner_su(requests, context)

    return grpc.stream_unary_rpc_method_handler(su, **kw)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d: grpc.ClientCallDetails, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = d.method
        self.timeout = d.timeout
        self.metadata = metadata  # type: ignore[assignment]  # grpc takes any sequence of pairs; the stubs say tuple
        self.credentials = d.credentials
        self.wait_for_ready = getattr(d, "wait_for_ready", None)
        self.compression = getattr(d, "compression", None)


class MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (a bearer token, the chain token) to every call of a blocking channel."""

    def __init__(self, pairs: list[tuple[str, str | bytes]]) -> None:
        self.pairs = list(pairs)

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(d, [*(d.metadata or ()), *self.pairs])

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def credential_metadata(*, token: str | None = None, chain_token: bytes | None = None) -> list[tuple[str, str | bytes]]:
    """Metadata for a caller: ``authorization: Bearer`` for inference, the chain token for internal RPCs."""
    pairs: list[tuple[str, str | bytes]] = []
    if token:
        pairs.append(("authorization", f"Bearer {token}"))
    if chain_token:
        pairs.append((TOKEN_METADATA, chain_token))
    return pairs
