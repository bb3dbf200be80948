"""The seed's taxonomy: which methods are valid for which domain."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import TaxonomyError

__all__ = ["DOMAINS", "METHODS", "TAXONOMY", "check"]

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

TAXONOMY: Mapping[str, tuple[str, ...]] = {
    "interpretability": ("sae_analysis", "probe_training", "ablation_study"),
    "training": ("fine_tuning", "ablation_study"),
    "benchmarking": ("ablation_study",),
    "alignment": ("fine_tuning", "probe_training", "ablation_study"),
}


def check(domain: str, method: str) -> None:
    """Check a domain/method pair against the taxonomy.

    Raises:
        TaxonomyError: naming the valid domains, or the valid methods for ``domain``.
    """
    if domain not in TAXONOMY:
        raise TaxonomyError(
            f"unknown domain {domain!r}; valid domains: {', '.join(TAXONOMY)}"
        )
    if method not in TAXONOMY[domain]:
        raise TaxonomyError(
            f"method {method!r} is not valid for domain {domain!r}; "
            f"valid methods for {domain}: {', '.join(TAXONOMY[domain])}"
        )
