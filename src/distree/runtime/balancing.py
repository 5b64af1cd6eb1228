"""One gRPC channel over every replica of a tier: the target, round-robin load balancing, client-side
health checking and the retry policy, all from gRPC itself (no balancing of our own).

- Target: one address as given (gRPC's DNS resolver; a name that resolves to several addresses, such
  as a Kubernetes headless Service, balances over all of them); several IP addresses as one
  ``ipv4:``/``ipv6:`` target; several host names are resolved once, here, into such a target.
- Service config: ``round_robin`` over the addresses; ``healthCheckConfig`` makes every subchannel
  watch the replica's ``grpc.health.v1`` status, so a replica that is draining (NOT_SERVING) or dead
  (connection lost) is skipped before a call is sent to it; a retry policy for the given methods
  re-sends a call that failed with UNAVAILABLE (e.g. its replica died with the call in flight) on
  another replica. Every method retried here is idempotent (inference of one input).
- The retry buffer is raised to the message size limit, or a large request would not be retried.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import Any

from ..errors import SpecError

#: retries of one call (first attempt included); gRPC caps this at 5
MAX_ATTEMPTS = 4
RETRY_BACKOFF_S = (0.01, 0.2)


def _split(addr: str) -> tuple[str, str]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), port


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _resolve(host: str, port: str) -> list[tuple[int, str]]:
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as e:
        raise SpecError(
            f"cannot resolve replica host {host!r} ({e}); give the replicas as IP addresses, or one DNS name "
            "that resolves to all of them"
        ) from e
    return [(4 if fam == socket.AF_INET else 6, str(sa[0])) for fam, _, _, _, sa in infos if fam in (2, 10)]


def tier_target(addresses: Sequence[str]) -> str:
    """A gRPC target naming every address of a tier (see the module doc)."""
    addrs = list(dict.fromkeys(addresses))
    if not addrs:
        raise SpecError("a tier needs at least one address")
    if len(addrs) == 1:
        return addrs[0]
    by_version: dict[int, list[str]] = {4: [], 6: []}
    for a in addrs:
        host, port = _split(a)
        v = _ip_version(host)
        if v is None:
            found = _resolve(host, port)
            if not found:
                raise SpecError(f"replica host {host!r} resolves to no IPv4 or IPv6 address")
            v, host = next(((v, ip) for v, ip in found if v == 4), found[0])
        by_version[v].append(f"{host}:{port}" if v == 4 else f"[{host}]:{port}")
    if by_version[4] and by_version[6]:
        raise SpecError(
            f"the replicas {addrs} mix IPv4 and IPv6 addresses; one channel balances over one family: use one"
        )
    v = 4 if by_version[4] else 6
    return f"ipv{v}:" + ",".join(dict.fromkeys(by_version[v]))


def service_config(methods: Sequence[tuple[str, str]], *, max_attempts: int = MAX_ATTEMPTS) -> str:
    """JSON service config: round_robin, health checking, and retries of ``methods`` ((service, method))."""
    first, longest = RETRY_BACKOFF_S
    cfg: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
    }
    if methods and max_attempts > 1:
        cfg["methodConfig"] = [
            {
                "name": [{"service": s, "method": m} for s, m in methods],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{first}s",
                    "maxBackoff": f"{longest}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(cfg)


def balanced_options(
    addresses: Sequence[str],
    base: Sequence[tuple[str, Any]],
    methods: Sequence[tuple[str, str]],
    max_message_bytes: int,
    *,
    retries: bool = True,
) -> tuple[str, list[tuple[str, Any]]]:
    """(target, channel options) of a channel over ``addresses``: ``base`` options with retries switched on
    (for ``methods``), the service config, and the authority of the first address (TLS name checks)."""
    target = tier_target(addresses)
    opts = [(k, v) for k, v in base if k != "grpc.enable_retries"]
    opts += [
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", service_config(methods if retries else ())),
        ("grpc.service_config_disable_resolution", 1),  # DNS TXT records cannot override it
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", 4 * max_message_bytes),
    ]
    if target.startswith(("ipv4:", "ipv6:")):
        opts.append(("grpc.default_authority", addresses[0]))
    return target, opts


__all__ = ["balanced_options", "service_config", "tier_target"]
