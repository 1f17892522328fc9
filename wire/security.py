"""ZeroMQ CURVE encryption and authentication, configured from key files.

Keys are the files ``zmq.auth.create_certificates`` writes: ``NAME.key`` (public only) and
``NAME.key_secret`` (public and secret). A server has its secret file and a folder of allowed
client public keys; a client has its own secret file and the server's public file. A client
whose key is not in the folder never gets a reply: the handshake is refused by the ZAP
handler, which runs in its own thread so a busy event loop cannot stall authentication.

Every server calls :func:`check_bind` before it binds: an endpoint reachable from other machines
(anything but loopback TCP, ``ipc://`` and ``inproc://``) is bound only with CURVE, unless the
operator said ``--insecure``. See ``docs/security.md``, "Authentication".
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator

from wire.errors import WireError

log = logging.getLogger(__name__)


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


# --- binding ------------------------------------------------------------------------------------
class InsecureBind(WireError):
    """A server asked to listen beyond this machine without CURVE (and without ``--insecure``)."""

    code = "insecure_bind"


#: the server options that switch CURVE on, and the one that waives it (named in the error)
CURVE_HINT = "--curve-secret KEY_SECRET --curve-clients DIR"
INSECURE_HINT = "--insecure"


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint``: ``ipc://``, ``inproc://``, or TCP on a
    loopback address (``127.x.x.x``, ``localhost``, ``[::1]``). Wildcards (``tcp://*``,
    ``tcp://0.0.0.0``, ``tcp://[::]``), other addresses, interface names and other transports are not."""
    scheme, sep, rest = endpoint.strip().partition("://")
    scheme = scheme.lower()
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0] if not rest.startswith("[") else rest[1:rest.find("]")]
    if ";" in rest or not host:  # a source address or no port: not a plain bind address
        return False
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:  # a host or interface name ("eth0", "rig.lab"): may face the network
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_bind(endpoint: str, curve: CurveServer | None, insecure: bool = False, *, server: str = "server") -> None:
    """Refuse (:class:`InsecureBind`) to bind ``endpoint`` without CURVE when other machines can
    reach it, unless ``insecure``; loopback, ``ipc://`` and ``inproc://`` need no keys."""
    if curve is not None or is_local_endpoint(endpoint):
        return
    if insecure:
        log.warning("%s: %s bound WITHOUT authentication (--insecure): anyone who can reach it may use it",
                    server, endpoint)
        return
    raise InsecureBind(
        f"refusing to bind {endpoint} without authentication: other machines can reach the {server} there. "
        f"Give {CURVE_HINT} (keys from `cortexloop keys generate`), bind a loopback or ipc:// endpoint, "
        f"or pass {INSECURE_HINT} on a network you trust")


def curve_server(secret: Path | None, clients: Path | None) -> CurveServer | None:
    """The CURVE configuration from a server's ``--curve-secret`` / ``--curve-clients`` (both or neither)."""
    if secret is None and clients is None:
        return None
    if secret is None or clients is None:
        raise WireError("--curve-secret and --curve-clients go together: the server's NAME.key_secret and "
                        "the folder of its allowed clients' public NAME.key files")
    return CurveServer(secret_key_file=secret, allowed_clients_dir=clients)


def curve_client(secret: Path | None, server_key: Path | None) -> CurveClient | None:
    """The CURVE configuration of a client from its own secret file and the server's public file (both or neither)."""
    if secret is None and server_key is None:
        return None
    if secret is None or server_key is None:
        raise WireError("a CURVE client needs both its own NAME.key_secret and the server's public NAME.key")
    return CurveClient(secret_key_file=secret, server_public_key_file=server_key)


def check_server_keys(cfg: CurveServer) -> None:
    """Fail early, with the file named, when a server's key files are missing or not certificates."""
    _load(cfg.secret_key_file, secret=True)
    if not cfg.allowed_clients_dir.is_dir():
        raise WireError(f"allowed-clients folder not found: {cfg.allowed_clients_dir}")
    clients = sorted(cfg.allowed_clients_dir.glob("*.key"))
    for path in clients:  # one unreadable file would make the ZAP handler admit no one at all
        _load(path, secret=False)
    if not clients:
        log.warning("no client keys (*.key) in %s: no client can connect", cfg.allowed_clients_dir)


def check_client_keys(cfg: CurveClient) -> None:
    """Fail early, with the file named, when a client's key files are missing or not certificates."""
    _load(cfg.secret_key_file, secret=True)
    _load(cfg.server_public_key_file, secret=False)
