"""TLS and mutual TLS for client→node and node→node channels, and a development CA.

:func:`create_dev_pki` writes a self-signed CA plus one certificate per node and one client
certificate (ECDSA P-256, SAN = the given hosts/IPs, usable as server *and* client certificates so a
node can present its own certificate when it calls its successor). For development and tests only:
the CA key is written next to the certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from .spec import ClusterSpec, SpecError
from .spec_tables import NodeSpec


@dataclass(frozen=True)
class ClientTLS:
    """What a caller needs: the CA to verify the server, optionally its own certificate (mutual TLS)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(p: Path | None, what: str) -> bytes | None:
    if p is None:
        return None
    try:
        return p.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read {what} {p}: {e}") from e


def server_credentials(spec: ClusterSpec, node: NodeSpec) -> grpc.ServerCredentials | None:
    """Credentials for node's server, or None without [tls]."""
    if spec.tls is None:
        return None
    key, cert = _read(node.key, "node key"), _read(node.cert, "node certificate")
    ca = _read(spec.tls.ca, "CA certificate")
    assert key is not None and cert is not None  # the spec requires cert and key on every node with [tls]
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if spec.tls.client_auth else None,
        require_client_auth=spec.tls.client_auth,
    )


def node_client_tls(spec: ClusterSpec, node: NodeSpec) -> ClientTLS | None:
    """How ``node`` calls its successor: the CA, and its own certificate as client certificate."""
    if spec.tls is None:
        return None
    return ClientTLS(
        ca=_read(spec.tls.ca, "CA certificate") or b"",
        cert=_read(node.cert, "node certificate"),
        key=_read(node.key, "node key"),
        server_name=spec.tls.server_name,
    )


def spec_client_tls(spec: ClusterSpec, cert: Path | None = None, key: Path | None = None) -> ClientTLS | None:
    """How an outside client (``distree infer``, cluster tools) calls node 1."""
    if spec.tls is None:
        return None
    cert = cert or spec.tls.client_cert
    key = key or spec.tls.client_key
    return ClientTLS(
        ca=_read(spec.tls.ca, "CA certificate") or b"",
        cert=_read(cert, "client certificate"),
        key=_read(key, "client key"),
        server_name=spec.tls.server_name,
    )


# ------------------------------------------------------------------ development PKI
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: list[str], identity: str | None = None):
    from cryptography import x509

    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)] if identity else []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file; a private file is created 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if private:
        os.chmod(path, 0o600)  # an umask cannot widen it; this only matters if the file existed
    return path


#: The identity a certificate carries, as a URI subject alternative name: ``distree://node/K`` for the
#: nodes of tier K (every replica of a tier shares it), ``distree://client/NAME`` for inference
#: clients and ``distree://operator/NAME`` for cluster tools. Servers admit calls by it (see
#: :mod:`distree.runtime.auth`).
IDENTITY_SCHEME = "distree"
ROLES = ("node", "client", "operator")


def identity_uri(role: str, name: str | int) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown certificate role {role!r}; use one of {', '.join(ROLES)}")
    if not str(name) or "/" in str(name):
        raise ValueError(f"identity name must be non-empty and without '/', got {name!r}")
    return f"{IDENTITY_SCHEME}://{role}/{name}"


def create_dev_ca(out_dir: str | Path, common_name: str = "distree development CA", days: int = 365) -> Path:
    """Write ``ca.pem`` + ``ca.key`` into ``out_dir``; return the folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(key), private=True)
    return out


def issue_cert(
    ca_dir: str | Path,
    name: str,
    hosts: list[str],
    days: int = 365,
    out_dir: str | Path | None = None,
    *,
    identity: str | None = None,
) -> tuple[Path, Path]:
    """Issue ``<name>.pem`` + ``<name>.key`` signed by the CA in ``ca_dir`` (server and client use).

    ``identity``: the role URI the certificate carries (:func:`identity_uri`), e.g. ``distree://node/2``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir = Path(ca_dir)
    out = Path(out_dir) if out_dir is not None else ca_dir
    out.mkdir(parents=True, exist_ok=True)
    if not (ca_dir / "ca.pem").is_file() or not (ca_dir / "ca.key").is_file():
        raise FileNotFoundError(f"no CA in {ca_dir} (ca.pem + ca.key); create one with `distree certs create`")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"certificate name must be a plain file stem, got {name!r}")
    if not hosts:
        raise ValueError("give at least one host name or IP address for the certificate")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts, identity), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cp = _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    kp = _write(out / f"{name}.key", _pem_key(key), private=True)
    return cp, kp


def create_dev_pki(
    out_dir: str | Path, num_nodes: int, hosts: list[str] | None = None, days: int = 365
) -> dict[str, Path]:
    """CA + ``node1..nodeN`` + ``client`` + ``operator`` certificates in ``out_dir``, each with its role
    identity (node K: ``distree://node/K``). Returns name → certificate path."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    hosts = hosts or ["127.0.0.1", "localhost"]
    out = create_dev_ca(out_dir, days=days)
    paths = {"ca": out / "ca.pem"}
    for k in range(1, num_nodes + 1):
        paths[f"node{k}"] = issue_cert(out, f"node{k}", hosts, days, identity=identity_uri("node", k))[0]
    paths["client"] = issue_cert(out, "client", hosts, days, identity=identity_uri("client", "client"))[0]
    paths["operator"] = issue_cert(out, "operator", hosts, days, identity=identity_uri("operator", "operator"))[0]
    return paths
