"""Running the collector: ``mailpath collector serve`` calls :func:`serve`.

In order, each failure one line: the settings (:class:`ConfigError`), the database migrated
or refused (:class:`CannotStart`), the listening socket bound (:class:`CannotStart`), then
uvicorn serves until SIGINT or SIGTERM. Logs go to stderr, one line each; the access log has
the client, the request line (method, path, query) and the status, never a header, so a token
(sent only in the Authorization header or a cookie) never reaches a log.
"""

from __future__ import annotations

import logging
import socket
import sys

from mailpath.collector.errors import CannotStart, ConfigError
from mailpath.collector.settings import CollectorSettings

log = logging.getLogger("mailpath.collector")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(access_log: bool = True) -> dict:
    """uvicorn's logging, plain lines on stderr (no colours, no headers)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"()": "logging.Formatter", "fmt": FORMAT},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(asctime)s %(levelname)s access: %(client_addr)s "%(request_line)s" %(status_code)s',
                "use_colors": False,
            },
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {
                "handlers": ["access"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
            "mailpath.collector": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise CannotStart(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def prepare(settings: CollectorSettings) -> None:
    """Check the data directory and bring the database to this collector's schema."""
    from mailpath.collector.admin import opened

    with opened(settings):
        pass


def serve(settings: CollectorSettings) -> None:
    """Serve until stopped (SIGINT, SIGTERM)."""
    import logging.config

    import uvicorn
    from mailpath.collector.app import create_app

    logging.config.dictConfig(log_config(settings.access_log))
    prepare(settings)
    host, port = settings.address
    sock = bind(host, port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,  # configured above
        access_log=settings.access_log,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    shown = app.state.collector.engine.url.render_as_string(hide_password=True)
    log.info("listening on %s (database %s)", url_of(sock), shown)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except SystemExit as e:  # uvicorn exits this way when the app's start-up fails
        raise CannotStart(
            f"the collector could not start (uvicorn exit {e.code}); see the log above"
        ) from None
    finally:
        sock.close()
        sys.stderr.flush()
