"""``python -m cas_vault``: the same as the ``vault`` command."""

from .cli import main

if __name__ == "__main__":
    main()
