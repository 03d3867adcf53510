"""``flagwarden serve``: the admin API and the web dashboard."""

from typing import Annotated

import typer

from flagwarden.cli.app import ConfigOption, app, fail, say
from flagwarden.errors import ConfigError


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="default: server.host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default: server.port")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the admin API (/api/v1, docs at /api/docs) and the dashboard; needs tokens
    (flagwarden token create)."""
    from flagwarden.config import load_settings
    from flagwarden.governance.state import StateStoreUnavailable

    try:
        from flagwarden.server import serve as run
    except ImportError as exc:
        raise fail(
            f"flagwarden serve needs the server extra: pip install 'flagwarden[server]' "
            f"({exc.name} is missing)"
        ) from None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    listen = settings.config.server
    where = f"http://{host or listen.host}:{listen.port if port is None else port}"
    say(f"serving {where} (dashboard at /, API docs at /api/docs); Ctrl-C stops", tag="serve")
    try:
        run(settings, host, port)
    except StateStoreUnavailable as exc:
        raise fail(f"cannot open the state store: {exc}") from None
