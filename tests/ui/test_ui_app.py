"""The UI server itself: assets from packages, security headers, errors, the CLI."""

from __future__ import annotations

import urllib.request

import pytest

from cas_vault.ui.assets import ASSETS, asset_path

from ui_browser import wait_for


def test_every_asset_comes_from_an_installed_package() -> None:
    for name in ASSETS:
        assert asset_path(name).is_file()


def test_page_loads_plotly_from_the_local_server(vault, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(url + "/")
    wait_for(browser, lambda: browser.find_element("css selector", "h1").text == "Specimens")
    shot("empty")
    with urllib.request.urlopen(url + "/assets/plotly.min.js") as r:
        assert r.headers["content-type"].startswith("text/javascript")
        assert b"plotly" in r.read(2000).lower()
