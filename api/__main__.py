"""`python -m api`: serve the HTTP API with uvicorn (host and port from the settings)."""

import uvicorn

from api.app import create_app
from infra.logs import configure_logging
from infra.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging("api")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        # open alert streams (SSE) never end by themselves: close them 3 s into a shutdown
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
