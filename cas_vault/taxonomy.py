"""The seed's taxonomy, and the rules of any taxonomy: which methods are valid for which domain.

A taxonomy is a table, domain -> its valid methods (:data:`Table`). The seed's table
(:data:`TAXONOMY`) is every vault's default; a vault declares its own by journaling pairs it adds
and removes (:mod:`cas_vault.taxonomies` replays them). This module knows no vault: it holds the
seed's table, the rule names follow (:func:`check_name`) and the check of a pair against a table
(:func:`check`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import InvalidInputError, TaxonomyError

__all__ = ["DOMAINS", "METHODS", "NAME_RULE", "TAXONOMY", "Table", "check", "check_name",
           "describe_pairs"]

#: A taxonomy: domain -> its valid methods, in order.
Table = Mapping[str, tuple[str, ...]]

DOMAINS: Mapping[str, str] = {
    "interpretability": "Understanding model internals",
    "training": "Model training and optimization",
    "benchmarking": "Evaluation and comparison",
    "alignment": "Safety and capability research",
}

METHODS: Mapping[str, str] = {
    "sae_analysis": "Sparse autoencoder analysis of model representations",
    "probe_training": "Training linear probes to detect learned features",
    "ablation_study": "Removing components to measure impact",
    "fine_tuning": "Continued training on specific data or tasks",
}

TAXONOMY: Table = {
    "interpretability": ("sae_analysis", "probe_training", "ablation_study"),
    "training": ("fine_tuning", "ablation_study"),
    "benchmarking": ("ablation_study",),
    "alignment": ("fine_tuning", "probe_training", "ablation_study"),
}

#: What a domain or method name a vault adds may be, in words (for messages).
NAME_RULE = ("1-64 lowercase letters (a-z), digits and underscores, starting with a letter, "
             "e.g. computer_vision")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_name(what: str, name: object) -> str:
    """Validate the name of a domain or method that a vault adds to its taxonomy.

    Args:
        what: ``"domain"`` or ``"method"`` (for the message).
        name: the name.

    Returns:
        The name.

    Raises:
        InvalidInputError: saying the rule (:data:`NAME_RULE`).
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidInputError(f"{what} name {name!r} is not allowed: a {what} name is "
                                f"{NAME_RULE}")
    return name


def describe_pairs(table: Table) -> str:
    """Every pair of a table, for messages: ``training: fine_tuning, ablation_study; ...``."""
    if not table:
        return "none (`vault taxonomy add DOMAIN METHOD` adds one)"
    return "; ".join(f"{d}: {', '.join(methods)}" for d, methods in table.items())


def check(domain: str, method: str, table: Table = TAXONOMY) -> None:
    """Check a domain/method pair against a taxonomy.

    Args:
        domain: the domain.
        method: the method.
        table: the taxonomy (a vault's own: :func:`cas_vault.taxonomies.vault_taxonomy`;
            by default the seed's).

    Raises:
        TaxonomyError: naming the valid domains and every valid pair, or the valid methods
            for ``domain``, and how to add a pair.
    """
    if domain not in table:
        raise TaxonomyError(
            f"unknown domain {domain!r}; valid domains: {', '.join(table) or 'none'}. "
            f"This vault's pairs: {describe_pairs(table)}; `vault taxonomy add DOMAIN METHOD` "
            "adds one"
        )
    if method not in table[domain]:
        raise TaxonomyError(
            f"method {method!r} is not valid for domain {domain!r}; "
            f"valid methods for {domain}: {', '.join(table[domain])} "
            f"(`vault taxonomy` lists every pair; `vault taxonomy add {domain} METHOD` adds one)"
        )
