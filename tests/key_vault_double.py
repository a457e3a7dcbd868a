"""A local HTTPS server that speaks the Key Vault secrets REST API, for the real `SecretClient`.

It does what the SDK's challenge-based authentication expects on the wire: a request without a
bearer token gets 401 with a `WWW-Authenticate` challenge naming the tenant and the resource;
a request with the token the test credential issues gets the secret (`GET /secrets/{name}`,
`api-version` required), 404 `SecretNotFound`, or 403 when access is switched off. It serves a
self-signed certificate for 127.0.0.1, written to a file the client is told to trust.

Only the token issuer has no local equivalent (Microsoft Entra ID), so `StaticTokenCredential`
stands in for it: it hands out one fixed token for the scope the challenge names, and the
server checks that token.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TENANT = "00000000-0000-0000-0000-00000000beef"
TOKEN = "test-vault-token"


class StaticTokenCredential:
    """Stands in for Entra ID (no local equivalent): one token for the vault's scope."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class VaultState:
    secrets: dict[str, str] = field(default_factory=dict)
    forbidden: bool = False  # the caller's identity lacks the Secrets User role
    down: bool = False  # every connection is closed without an answer
    seen: list[SeenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class KeyVaultDouble:
    """The server, its URL, its certificate file and its state (secrets, faults, requests)."""

    def __init__(self, directory: Path) -> None:
        self.state = VaultState()
        self.cert_path = directory / "vault-cert.pem"
        key_path = directory / "vault-key.pem"
        write_self_signed(self.cert_path, key_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set_secret(self, name: str, value: str) -> None:
        with self.state.lock:
            self.state.secrets[name] = value

    def secret_reads(self, name: str) -> int:
        """Authenticated reads of one secret (the challenge round trips are not reads)."""
        with self.state.lock:
            return sum(
                1
                for seen in self.state.seen
                if seen.authorization and seen.path.startswith(f"/secrets/{name}")
            )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: VaultState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `state.seen` instead."""

    def do_GET(self) -> None:
        state = self.state
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        authorization = self.headers.get("Authorization")
        with state.lock:
            state.seen.append(SeenRequest("GET", parts.path, query, authorization))
            down, forbidden = state.down, state.forbidden
            segments = parts.path.strip("/").split("/")
            value = state.secrets.get(segments[1]) if len(segments) >= 2 else None
        if down:
            self.close_connection = True
            self.connection.close()
            return
        if not query.get("api-version"):
            return self._error(400, "MissingApiVersionParameter", "api-version is required")
        if authorization is None:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="{self._resource()}"'
            )
            return self._send(401, {"error": {"code": "Unauthorized"}}, challenge)
        if authorization != f"Bearer {TOKEN}":
            return self._error(401, "Unauthorized", "the token is not valid")
        if forbidden:
            message = "Caller is not authorized to perform action on resource."
            return self._error(403, "Forbidden", message)
        if len(segments) < 2 or segments[0] != "secrets":
            return self._error(404, "NotFound", "no such route")
        name = segments[1]
        if value is None:
            message = f"A secret with (name/id) {name} was not found in this key vault."
            return self._error(404, "SecretNotFound", message)
        now = int(time.time())
        body = {
            "value": value,
            "id": f"{self._resource()}/secrets/{name}/{uuid.uuid4().hex}",
            "attributes": {"enabled": True, "created": now, "updated": now},
            "tags": {},
        }
        self._send(200, body)

    def _resource(self) -> str:
        host, port = self.server.server_address[:2]
        return f"https://{host}:{port}"

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _send(self, status: int, body: dict[str, Any], challenge: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if challenge:
            self.send_header("WWW-Authenticate", challenge)
        self.end_headers()
        self.wfile.write(data)


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "key-vault-double")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
