"""Peer (b): stock WsgiDAV + cheroot with a required client certificate.

    python bench/stock_wsgidav.py --root DIR --cert server.crt --key server.key --ca ca.crt \
        --user NAME --password-file FILE

Serves DIR at https://127.0.0.1:PORT/data/ with a FilesystemProvider, HTTP Basic
through WsgiDAV's SimpleDomainController, and cheroot's BuiltinSSLAdapter whose
context demands a client certificate from the CA. No audit log, no atomic PUT,
no password hashing: this is WsgiDAV as its documentation sets it up.
Prints "serving PORT" on stdout once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("root", "cert", "key", "ca", "user", "password-file"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=50)  # what `wsgidav` (server_cli.py) passes to cheroot
    args = p.parse_args()
    with open(args.password_file, encoding="utf-8") as f:
        password = f.read().strip()

    app = WsgiDAVApp(
        {
            "provider_mapping": {"/data": FilesystemProvider(args.root, readonly=False)},
            "http_authenticator": {
                "domain_controller": None,  # None = SimpleDomainController
                "accept_basic": True,
                "accept_digest": False,
                "default_to_digest": False,
            },
            "simple_dc": {"user_mapping": {"*": {args.user: {"password": password}}}},
            "verbose": 1,
            "logging": {"enable": False},
        }
    )
    server = wsgi.Server(("127.0.0.1", args.port), app, numthreads=args.threads, server_name="wsgidav-stock")
    adapter = BuiltinSSLAdapter(args.cert, args.key)
    adapter.context.verify_mode = ssl.CERT_REQUIRED
    adapter.context.load_verify_locations(cafile=args.ca)
    server.ssl_adapter = adapter

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    server.prepare()
    print(f"serving {server.bind_addr[1]}", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
