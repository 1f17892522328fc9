"""ZeroMQ CURVE encryption and authentication, configured from key files.

Keys are the files ``zmq.auth.create_certificates`` writes: ``NAME.key`` (public only) and
``NAME.key_secret`` (public and secret). A server has its secret file and a folder of allowed
client public keys; a client has its own secret file and the server's public file. A client
whose key is not in the folder never gets a reply: the handshake is refused by the ZAP
handler, which runs in its own thread so a busy event loop cannot stall authentication.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator

from wire.errors import WireError


class CurveServer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret_key_file: Path = Field(description="the server's NAME.key_secret file")
    allowed_clients_dir: Path = Field(description="folder of allowed clients' public NAME.key files")


class CurveClient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret_key_file: Path = Field(description="the client's NAME.key_secret file")
    server_public_key_file: Path = Field(description="the server's public NAME.key file")


def generate_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``folder``; returns (public, secret) paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise WireError(f"CURVE key file not found: {path}")
    try:
        public, sec = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise WireError(f"not a ZeroMQ certificate file: {path}: {exc}") from exc
    if secret and sec is None:
        raise WireError(f"{path} holds no secret key (use the NAME.key_secret file)")
    return public, sec


_auth_lock = threading.Lock()
_authenticators: dict[int, ThreadAuthenticator] = {}


def _authenticator(ctx: zmq.Context) -> ThreadAuthenticator:
    with _auth_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None or not auth.is_alive():
            auth = ThreadAuthenticator(ctx)
            auth.start()
            _authenticators[id(ctx)] = auth
        return auth


def secure_server(sock: zmq.Socket, cfg: CurveServer, domain: str) -> None:
    """Make ``sock`` a CURVE server that admits only the allowed clients (call before bind)."""
    if not cfg.allowed_clients_dir.is_dir():
        raise WireError(f"allowed-clients folder not found: {cfg.allowed_clients_dir}")
    public, secret = _load(cfg.secret_key_file, secret=True)
    auth = _authenticator(sock.context)
    auth.configure_curve(domain=domain, location=str(cfg.allowed_clients_dir))
    sock.zap_domain = domain.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret  # type: ignore[assignment]
    sock.curve_server = True


def secure_client(sock: zmq.Socket, cfg: CurveClient) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is configured (call before connect)."""
    public, secret = _load(cfg.secret_key_file, secret=True)
    server_public, _ = _load(cfg.server_public_key_file, secret=False)
    sock.curve_publickey = public
    sock.curve_secretkey = secret  # type: ignore[assignment]
    sock.curve_serverkey = server_public
