"""``vault ui``: a read-only web page over a vault, served on 127.0.0.1.

    from cas_vault.ui import create_app, serve
    serve(Repository.open("~/lab"), port=8600)          # what `vault ui` runs

One module per concern: :mod:`.app` assembles the ASGI application (Starlette) from the page
modules in :mod:`.pages`, :mod:`.templating` renders Jinja2 templates with autoescaping on for
every template (so user text is escaped everywhere by default), :mod:`.markdown` renders notes
safely, :mod:`.assets` serves front-end code from the Python packages that ship it, and
:mod:`.server` runs uvicorn.
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
