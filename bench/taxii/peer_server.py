"""Serves one of the TAXII 2.1 servers Entente is compared with, on loopback, under the
waitress WSGI server (not the frameworks' debug servers).

Usage:
  peer_server.py opentaxii PORT            (configuration from OPENTAXII_CONFIG)
  peer_server.py medallion PORT CONFIG_JSON

Run by compare.py inside the benchmark's virtual environment. OpenTAXII 0.9.3 gets the
runtime fixes below before it serves; medallion runs unchanged.
"""

import json
import logging
import sys

import waitress


def opentaxii_app():
    """OpenTAXII's WSGI application with two fixes applied at run time.

    1. Its TAXII 2.1 answers are serialised with `json.dumps`, which cannot encode the
       `uuid.UUID` values its SQL persistence layer returns for collection ids, so
       `GET {api-root}/collections/` fails with a 500 ("Object of type UUID is not JSON
       serializable"). The fix serialises anything json cannot encode with `str()`.
    2. See `fix_post_content_type` below.
    """
    import opentaxii.server
    import opentaxii.taxii2.http
    from opentaxii.config import ServerConfig
    from opentaxii.middleware import create_app
    from opentaxii.server import TAXIIServer
    from opentaxii.utils import configure_logging

    original = opentaxii.taxii2.http.make_taxii2_response

    def make_taxii2_response(data, status=200, extra_headers=None):
        if not isinstance(data, str):
            data = json.dumps(data, default=str)
        return original(data, status, extra_headers)

    opentaxii.server.make_taxii2_response = make_taxii2_response

    config = ServerConfig()
    configure_logging(config["logging"], plain=True)
    return create_app(TAXIIServer(config))


def medallion_app(config_path):
    import medallion

    logging.getLogger("medallion").setLevel(logging.WARNING)
    return medallion.load_app(config_path)


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "opentaxii":
        app = opentaxii_app()
    elif kind == "medallion":
        app = medallion_app(sys.argv[3])
    else:
        sys.exit(f"unknown server {kind!r}")
    # One process, a few threads: the client sends one request at a time.
    waitress.serve(app, host="127.0.0.1", port=port, threads=4, ident=None,
                   _quiet=True)


if __name__ == "__main__":
    main()
