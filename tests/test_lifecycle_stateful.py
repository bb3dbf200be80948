"""A hypothesis state machine for life after sealing: retire (with and without purge), label and
annotate, add and remove taxonomy pairs, interleaved with commits (some deriving from others, some
with an added pair) and gc.

Properties: nothing live is ever lost (every live specimen's bytes read back, and so do those of
every ancestor a live specimen reaches); nothing that only a purged specimen held remains after
gc; labels point where the model says and annotations are what the model says, also after the
catalog is rebuilt from the journal; `vault new` accepts exactly the model's pairs, and a pair
is removed only when no live specimen uses it; verify passes throughout. The model is plain
Python and computes digests with ``blake3`` directly.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import blake3
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from cas_vault import Vault
from cas_vault.annotations import annotate, annotations
from cas_vault.errors import (
    AlreadyExistsError,
    ImmutableError,
    InvalidInputError,
    NotFoundError,
    TaxonomyError,
)
from cas_vault.labels import labels, set_label
from cas_vault.retirement import retire
from cas_vault.taxonomies import vault_taxonomy
from cas_vault.taxonomy import TAXONOMY

DATA = "strata/data.bin"
LABELS = ("best", "prod", "fig-3")
#: The pair most commits use (never removed), and those the machine adds, removes and uses.
BASE = ("training", "fine_tuning")
PAIRS = (("benchmarking", "ablation_study"), ("vision", "segmentation"), ("vision", "fine_tuning"))
PROBE = "probe"


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class LifecycleMachine(RuleBasedStateMachine):
    """Checks the vault against the model after every interleaving hypothesis tries."""

    committed = Bundle("committed")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cas-vault-lifecycle-"))
        self.vault = Vault.init(self.dir / "vault")
        self.data: dict[str, bytes] = {}
        self.parent: dict[str, str | None] = {}
        self.retired: dict[str, bool] = {}  # id -> purged
        self.labels: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self.pairs = {(d, m) for d, methods in TAXONOMY.items() for m in methods}
        self.pair: dict[str, tuple[str, str]] = {}
        self.n = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model -------------------------------------------------------------------------
    def live(self) -> set[str]:
        """Live specimens and every ancestor a live one reaches (their objects are needed)."""
        out: set[str] = set()
        for sid in self.data:
            if sid in self.retired:
                continue
            cur: str | None = sid
            while cur is not None and cur not in out:
                out.add(cur)
                cur = self.parent[cur]
        return out

    # -- actions ---------------------------------------------------------------------------
    @rule(target=committed, data=st.binary(min_size=1, max_size=32))
    def commit(self, data: bytes) -> str:
        return self._commit(data, None)

    @rule(target=committed, parent=committed, data=st.binary(min_size=1, max_size=32))
    def commit_child(self, parent: str, data: bytes) -> str:
        if parent in self.retired:  # its commit may be gone after gc: refused, nothing made
            with pytest.raises(InvalidInputError, match="retired"):
                self.vault.new(f"x{self.n:03d}", domain="training", method="fine_tuning",
                               parents=[parent])
            assert not self.vault.specimen_dir(f"x{self.n:03d}").exists()
            return self._commit(data, None)
        return self._commit(data, parent)

    @rule(target=committed, source=committed)
    def commit_same_bytes(self, source: str) -> str:
        return self._commit(self.data[source], None)  # deduplicated with the source

    @rule(target=committed, pair=st.sampled_from(PAIRS), data=st.binary(min_size=1, max_size=32))
    def commit_with_pair(self, pair: tuple[str, str], data: bytes) -> str:
        if pair not in self.pairs:
            with pytest.raises(TaxonomyError):
                self.vault.new(f"s{self.n:03d}", domain=pair[0], method=pair[1])
            assert not self.vault.specimen_dir(f"s{self.n:03d}").exists()
            return self._commit(data, None)
        return self._commit(data, None, pair)

    def _commit(self, data: bytes, parent: str | None, pair: tuple[str, str] = BASE) -> str:
        sid = f"s{self.n:03d}"
        self.n += 1
        wd = self.vault.new(sid, domain=pair[0], method=pair[1],
                            parents=[parent] if parent else [])
        (wd / "strata" / "data.bin").write_bytes(data)
        self.vault.commit(sid)
        self.data[sid], self.parent[sid], self.pair[sid] = data, parent, pair
        return sid

    def _journal(self) -> bytes:
        path = self.vault.refs.journal
        return path.read_bytes() if path.exists() else b""

    @rule(pair=st.sampled_from(PAIRS))
    def taxonomy_add(self, pair: tuple[str, str]) -> None:
        journal = self._journal()
        if pair in self.pairs:
            with pytest.raises(AlreadyExistsError):
                self.vault.taxonomy_add(*pair)
            assert self._journal() == journal
            return
        self.vault.taxonomy_add(*pair)
        self.pairs.add(pair)

    @rule(pair=st.sampled_from(PAIRS))
    def taxonomy_remove(self, pair: tuple[str, str]) -> None:
        self._remove(pair)

    @rule(sid=committed)
    def taxonomy_remove_a_pair_used(self, sid: str) -> None:
        if self.pair[sid] != BASE:  # the commits of the other rules need it
            self._remove(self.pair[sid])

    def _remove(self, pair: tuple[str, str]) -> None:
        journal = self._journal()
        in_use = any(p == pair and s not in self.retired for s, p in self.pair.items())
        if pair not in self.pairs or in_use:
            with pytest.raises(NotFoundError if pair not in self.pairs else InvalidInputError):
                self.vault.taxonomy_remove(*pair)
            assert self._journal() == journal
            return
        self.vault.taxonomy_remove(*pair)
        self.pairs.discard(pair)

    @rule(sid=committed, purge=st.booleans(), reason=st.text(min_size=1, max_size=20))
    def retire(self, sid: str, purge: bool, reason: str) -> None:
        journal = self.vault.refs.journal.read_bytes()
        if not reason.strip():  # the arguments are checked first
            with pytest.raises(InvalidInputError):
                retire(self.vault, sid, reason, purge=purge)
            assert self.vault.refs.journal.read_bytes() == journal
            return
        if sid in self.retired:
            with pytest.raises(ImmutableError, match="retired already"):
                retire(self.vault, sid, reason, purge=purge)
            assert self.vault.refs.journal.read_bytes() == journal
            return
        retire(self.vault, sid, reason, purge=purge)
        self.retired[sid] = purge

    @rule(name=st.sampled_from(LABELS), sid=committed)
    def label(self, name: str, sid: str) -> None:
        if sid in self.retired:
            with pytest.raises(InvalidInputError, match="retired"):
                set_label(self.vault, name, sid)
            return
        set_label(self.vault, name, sid)
        self.labels[name] = sid

    @rule(sid=committed, text=st.text(min_size=1, max_size=20).filter(lambda t: t.strip()))
    def annotate(self, sid: str, text: str) -> None:
        annotate(self.vault, sid, text)
        self.notes.setdefault(sid, []).append(text.strip())

    @rule()
    def gc(self) -> None:
        self.vault.gc(grace=0)
        present = set(self.vault.objects.iter_digests())
        live = self.live()
        needed = {b3(self.data[s]) for s in live}
        assert needed <= present, "gc removed an object a live specimen needs"
        for sid in live:
            assert self.vault.specimen(sid).read_bytes(DATA) == self.data[sid]
        # Retired without purge, or purged: what only they held is gone once gc ran (grace 0).
        gone = {b3(self.data[s]) for s in self.retired} - needed
        assert not gone & present, "gc kept what only retired specimens held"

    @precondition(lambda self: bool(self.retired))
    @rule()
    def rebuild_catalog(self) -> None:
        self.vault.index(rebuild=True)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def verify_passes_and_tells_retired_from_lost(self) -> None:
        report = self.vault.verify()
        assert report.ok, report.problems
        named = {i.specimen for i in report.info if i.kind == "retired_specimen"}
        assert named == set(self.retired)

    @invariant()
    def vault_new_accepts_exactly_the_models_pairs(self) -> None:
        assert {(p.domain, p.method) for p in vault_taxonomy(self.vault).pairs} == self.pairs
        for pair in PAIRS:
            if pair in self.pairs:
                self.vault.new(PROBE, domain=pair[0], method=pair[1])
                self.vault.rm(PROBE)
            else:
                with pytest.raises(TaxonomyError):
                    self.vault.new(PROBE, domain=pair[0], method=pair[1])
            assert not self.vault.specimen_dir(PROBE).exists()

    @invariant()
    def views_match_the_model(self) -> None:
        assert {n: lb.specimen_id for n, lb in labels(self.vault).items()} == self.labels
        for sid, texts in self.notes.items():
            assert [a.text for a in annotations(self.vault, sid)] == texts
        listed = {e.specimen_id for e in self.vault.log()}
        assert listed == set(self.data) - set(self.retired)
        rows = self.vault.query("SELECT specimen_id FROM catalog")["specimen_id"].to_list()
        assert set(rows) == set(self.data) - set(self.retired)
        for sid in self.retired:
            with pytest.raises(NotFoundError, match="retired"):
                self.vault.show(sid)


TestLifecycleStateMachine = LifecycleMachine.TestCase
