"""Real grpc.aio servers on loopback for integration tests (raw bytes, no generated code)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import tether.grpc

SERVICE = "test.Echo"


@asynccontextmanager
async def grpc_server(
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: tuple[bytes, bytes] | None = None,
    **settings: Any,
) -> AsyncIterator[str]:
    """A tether-wrapped grpc.aio server with `handlers` under `SERVICE`; yields its target.
    `tls`: (private key, certificate), PEM, to serve TLS instead of plaintext."""
    server = tether.grpc.server(interceptors=interceptors, **settings)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def self_signed_certificate() -> tuple[bytes, bytes]:
    """A throwaway private key and certificate (PEM) for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)
