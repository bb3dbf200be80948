"""The example specimens shipped with cas-vault (``specimens/`` in the source tree).

In a wheel they are packaged as ``cas_vault/_examples``; in a source checkout or editable
install they are read from the repository's ``specimens/`` folder.
"""

from __future__ import annotations

from pathlib import Path

from .errors import NotFoundError

__all__ = ["example_dir"]


def example_dir(name: str) -> Path:
    """Return the directory of the shipped example specimen ``name``.

    Raises:
        NotFoundError: if the installation does not include it.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_examples" / name, here.parent / "specimens" / name):
        if (candidate / "protocol.py").is_file():
            return candidate
    raise NotFoundError(
        f"example specimen {name!r} is not included in this installation; reinstall cas-vault "
        "from its source tree (pip install -e .)"
    )
