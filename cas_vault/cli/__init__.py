"""The ``vault`` command line: a thin layer over the library.

Each command opens the repository (:class:`cas_vault.repository.Repository`) and calls one
library function, the way sqlite-utils' CLI does.

One module per group of commands; :mod:`.main` holds the root group, the shared ``--vault``
option and the single place where library errors become messages and exit codes.
"""

from .main import cli, main

__all__ = ["cli", "main"]
