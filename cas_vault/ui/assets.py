"""Front-end code from the Python packages that ship it, served locally.

No CDN and no copy of third-party files in this repository: ``pip install`` brings the files,
this module finds them inside the installed package and the app serves them from
``/assets/<name>``. Only the names listed here are served, so no request can name another file.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import NotFoundError

__all__ = ["ASSETS", "Asset", "asset_path"]


@dataclass(frozen=True)
class Asset:
    """One file a package ships: the package, its path inside it and the media type."""

    package: str
    path: str
    media_type: str


#: Every third-party file the pages load, by the name they load it under.
ASSETS: dict[str, Asset] = {
    # plotly.py bundles the matching plotly.js for offline use (plotly.offline does the same).
    "plotly.min.js": Asset("plotly", "package_data/plotly.min.js", "text/javascript"),
}


@cache
def asset_path(name: str) -> Path:
    """Return the installed file behind asset ``name``.

    Args:
        name: a key of :data:`ASSETS`.

    Returns:
        The file's path inside the installed package.

    Raises:
        NotFoundError: if ``name`` is not an asset, or its package is installed without it.
    """
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFoundError(f"no asset named {name!r}")
    path = Path(str(importlib.resources.files(asset.package).joinpath(asset.path)))
    if not path.is_file():
        raise NotFoundError(
            f"the {asset.package} package has no {asset.path}: reinstall it "
            f"(pip install --force-reinstall {asset.package})")
    return path
