"""Who may call the server and which paths it may touch: the token, the allowed roots, and
error messages scrubbed of server paths outside them."""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field

from batchcli.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_ok(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8750
    token: str | None = None
    roots: list[str] = field(default_factory=list)  # real paths of the --allow-root folders
    home: str | None = None
    max_upload: int = 200 * 1024 * 1024  # bytes per uploaded file
    max_files: int = 1000  # files per upload request
    cors: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Refuse a configuration that would expose batches: exit 2 before binding."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"--host {self.host} is not a loopback address: a token is required "
                              "(--token T, BATCHCLI_TOKEN, or --token auto to generate one)")
        if not self.roots:
            raise ConfigError("no --allow-root folder")
        for r in self.roots:
            if not os.path.isdir(r):
                raise ConfigError(f"--allow-root {r}: not a folder")


class PathGuard:
    """Paths from requests: relative ones are taken under the first allowed root; `..`, absolute
    paths outside every root and symlinks that lead out of one are refused (400)."""

    def __init__(self, roots: list[str], home: str):
        self.roots = [os.path.realpath(r) for r in roots]
        self.home = os.path.realpath(home)

    def inside(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def resolve(self, raw: str, what: str) -> str:
        """An absolute path for `raw` (which may not exist yet), checked against the roots."""
        if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
            raise ConfigError(f"{what}: an empty or invalid path")
        if ".." in re.split(r"[\\/]+", raw):
            raise ConfigError(f"{what} {raw!r}: '..' is not allowed")
        path = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(self.roots[0], raw))
        if not self.inside(_real_prefix(path)):
            raise ConfigError(f"{what} {raw!r}: outside the allowed folders")
        return path

    def scrub(self, msg: str) -> str:
        """An error message without the server's own paths: the batch home and anything absolute
        outside the allowed roots are replaced."""
        msg = msg.replace(self.home, "<home>")
        return re.sub(r"(?<![\w.<])/[^\s'\",;:()]+", lambda m: m.group(0) if self.inside(
            _real_prefix(m.group(0))) else "<path>", msg)


def _real_prefix(path: str) -> str:
    """realpath of the longest existing prefix of `path`, plus the rest as given."""
    head, tail = path, []
    while head and not os.path.lexists(head):
        head, name = os.path.split(head)
        if not name:
            break
        tail.append(name)
    return os.path.join(os.path.realpath(head or os.sep), *reversed(tail))
