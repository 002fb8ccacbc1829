"""Run the web app with uvicorn (one worker: rate limits and caches live in its memory).

python -m order_pipeline.web.server --config order_pipeline.yaml --port 8080
python -m order_pipeline.web.server --config order_pipeline.yaml --fd 3   # a socket a service manager opened
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from order_pipeline.contract.config import Config, ConfigError, load_config
from order_pipeline.web.app import create_app
from order_pipeline.web.security.startup import startup_warnings
from order_pipeline.web.settings import WebSettings

log = logging.getLogger(__name__)


def log_startup_warnings(settings: WebSettings) -> None:
    for warning in startup_warnings(settings):
        log.warning("%s", warning)


def serve(config: Config, host: str = "127.0.0.1", port: int = 8080, fd: int | None = None) -> None:
    settings = WebSettings.from_config(config)
    log_startup_warnings(settings)
    app = create_app(config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        fd=fd,  # when given, host and port are the socket's already
        workers=1,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        access_log=False,  # request lines would carry the customers' link tokens; tracking_access_log has the visits
        server_header=False,
        log_level="info",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m order_pipeline.web.server", description="Serve the customer tracking page and the ops board."
    )
    parser.add_argument(
        "--config", help="configuration file (default: $ORDER_PIPELINE_CONFIG or ./order_pipeline.yaml)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fd", type=int, help="serve on this already listening socket instead of host:port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        WebSettings.from_config(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(config, host=args.host, port=args.port, fd=args.fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
