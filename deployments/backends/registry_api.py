"""Worker images leave the registry they were pushed to, as they leave the engine.

The Docker Registry HTTP API v2: the tag's manifest digest (``HEAD /v2/<repository>/manifests/<tag>``),
then ``DELETE /v2/<repository>/manifests/<digest>``. Every worker image has a tag of its own (its
key's content hash is in it), so the digest names no other worker image of that repository. The
registry keeps the layers until its own offline ``registry garbage-collect`` runs; one that does not
allow deletes (``storage.delete.enabled``) answers 405, and the tag stays with a line that says so.

The registry is the one ``KILN_DOCKER_IMAGE_REPOSITORY`` names (an operator's setting, never a
user's), reached as the engine reaches it: over HTTPS, or plain HTTP where the engine treats it as
insecure (a loopback address, ``--insecure-registry``); with ``KILN_DOCKER_REGISTRY_USERNAME`` and
``_PASSWORD`` as basic credentials, or for a token the registry's challenge points to.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import httpx
from django.conf import settings

from deployments.backends.base import BackendError
from deployments.backends.docker_engine import ENGINE_ERRORS, engine, short_error, unavailable
from deployments.backends.docker_images import registry_of

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
TIMEOUT_S = 30.0


class RegistryUnavailable(BackendError):
    """The registry did not answer, or answered with a server error: a later try may do."""


def delete_from_registry(tag: str) -> str:
    """Remove ``tag``'s manifest from its registry: ``deleted``, ``absent``, or ``refused: why``
    (the registry will not, for good); "" when the tag names no registry.

    Raises ``RegistryUnavailable`` when the registry does not answer (or fails on its side).
    """
    host = registry_of(tag)
    if not host:
        return ""
    repository, _, reference = tag[len(host) + 1 :].rpartition(":")
    secure = _secure(host)
    # HTTPS first; plain HTTP after it where the engine takes the registry as insecure (as it does).
    bases = [f"https://{host}"] if secure else [f"https://{host}", f"http://{host}"]
    last_error: Exception | None = None
    for base in bases:
        try:
            with httpx.Client(timeout=TIMEOUT_S, verify=secure) as http:
                return _delete(_Session(http, repository), f"{base}/v2/{repository}/manifests/", reference)
        except httpx.TransportError as exc:
            last_error = exc
    raise RegistryUnavailable(
        f"the registry {host} does not answer ({short_error(last_error or OSError('no address'))})",
        code="registry_unavailable",
    )


def _delete(session: _Session, manifests: str, reference: str) -> str:
    found = session.call("HEAD", manifests + reference, headers={"Accept": MANIFEST_TYPES})
    if found.status_code == 404:
        return "absent"
    if found.status_code != 200:
        return _refused(found, "reading the manifest")
    digest = found.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        return "refused: the registry did not say the manifest's digest"
    gone = session.call("DELETE", manifests + digest)
    if gone.status_code in (200, 202):
        return "deleted"
    if gone.status_code == 404:
        return "absent"
    if gone.status_code == 405:
        return "refused: the registry does not allow deletes (its storage.delete.enabled is off)"
    return _refused(gone, "deleting the manifest")


def _refused(answer: httpx.Response, doing: str) -> str:
    if answer.status_code >= 500 or answer.status_code == 429:
        raise RegistryUnavailable(
            f"the registry answered {answer.status_code} {doing}", code="registry_unavailable"
        )
    return f"refused: the registry answered {answer.status_code} {doing}: {answer.text[:200]}"


class _Session:
    """Requests to one repository: basic credentials, or a bearer token when the registry asks."""

    def __init__(self, http: httpx.Client, repository: str) -> None:
        self.http = http
        self.repository = repository
        self.auth: Any = None
        if settings.KILN_DOCKER_REGISTRY_USERNAME:
            self.auth = httpx.BasicAuth(
                settings.KILN_DOCKER_REGISTRY_USERNAME, settings.KILN_DOCKER_REGISTRY_PASSWORD
            )

    def call(self, method: str, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        answer = self.http.request(method, url, headers=headers, auth=self.auth)
        challenge = answer.headers.get("WWW-Authenticate", "")
        if answer.status_code == 401 and challenge.lower().startswith("bearer "):
            token = self._token(_challenge_params(challenge[len("bearer ") :]))
            if token:
                merged = {**(headers or {}), "Authorization": f"Bearer {token}"}
                answer = self.http.request(method, url, headers=merged)
        return answer

    def _token(self, params: dict[str, str]) -> str:
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return ""
        params["scope"] = f"repository:{self.repository}:pull,delete"
        answer = self.http.get(realm, params=params, auth=self.auth)
        if answer.status_code != 200:
            return ""
        try:
            body = answer.json()
        except ValueError:
            return ""
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else ""
        return token if isinstance(token, str) else ""


def _challenge_params(text: str) -> dict[str, str]:
    """``realm="...",service="..."`` as a dict (the values are quoted, without commas inside)."""
    params: dict[str, str] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return params


def _secure(host: str) -> bool:
    """Whether the engine takes the registry as secure (HTTPS with certificates checked only)."""
    try:
        config = engine().info().get("RegistryConfig") or {}
    except ENGINE_ERRORS as exc:
        raise unavailable(exc) from exc
    index = (config.get("IndexConfigs") or {}).get(host)
    if isinstance(index, dict) and "Secure" in index:
        return bool(index["Secure"])
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    networks = []
    for cidr in config.get("InsecureRegistryCIDRs") or []:
        try:
            networks.append(ipaddress.ip_network(cidr))
        except ValueError:
            continue
    return not any(address in network for address in _addresses(name) for network in networks)


def _addresses(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(name)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return []
    found = []
    for info in infos:
        try:
            found.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except ValueError:
            continue
    return found
