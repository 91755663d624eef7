"""A token server for a registry's bearer-token auth (what Harbor, GitLab or Docker Hub answer with).

The registry's challenge names this server's realm; a client with the right basic credentials gets
a JWT for the scope it asks, signed (RS256, by ``openssl``) with a key whose self-signed
certificate the registry trusts (``rootcertbundle``). The registry itself verifies each token.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ISSUER = "kiln-test-tokens"
SERVICE = "kiln-test-registry"


class TokenServer:
    """Serves ``GET /token?service=...&scope=repository:<name>:<actions>`` to ``user`` on loopback."""

    def __init__(self, root: Path, user: tuple[str, str]) -> None:
        self.key, self.cert = root / "token-key.pem", root / "token-cert.pem"
        self.user = user
        self.issued: list[str] = []  # the scopes asked for, in order
        self._server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> None:
        """Serve (on a new port after a ``stop``); the key and certificate are made once."""
        if self._server is not None:
            return
        if not self.cert.exists():
            self._make_key()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _make_key(self) -> None:
        command = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kiln-test",
        ]
        subprocess.run(
            [*command, "-keyout", str(self.key), "-out", str(self.cert)],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def token(self, scope: str) -> str:
        """A signed token granting ``scope`` (``repository:<name>:<action>,<action>``)."""
        kind, name, actions = scope.split(":", 2)
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": self.user[0],
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": [{"type": kind, "name": name, "actions": actions.split(",")}],
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if self.headers.get("Authorization") != expected:
                    self._answer(401, {"details": "wrong credentials"})
                    return
                scopes = query.get("scope", [])
                server.issued.extend(scopes)
                token = server.token(scopes[0]) if scopes else ""
                self._answer(200, {"token": token, "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
                pass

        return Handler


def token_config(server: TokenServer) -> str:
    """The registry's ``auth`` section for ``server``."""
    return (
        "auth:\n  token:\n"
        f"    realm: {server.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {server.cert}\n"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
