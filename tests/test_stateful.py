"""A hypothesis state machine interleaving commits, reads, garbage, gc, tampering and verify.

The model is plain Python: specimen id -> the bytes of its data file, the set of objects put
without any commit (garbage), and the objects currently tampered with (with their original
bytes). Expected digests are computed with ``blake3`` directly, never through the store's
helpers, so the model stays an independent oracle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import blake3
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from cas_vault import Vault
from cas_vault.errors import ChecksumMismatch

DATA = "strata/data.bin"


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class VaultMachine(RuleBasedStateMachine):
    """Checks the vault against the model after every interleaving hypothesis tries."""

    committed = Bundle("committed")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cas-vault-stateful-"))
        self.vault = Vault.init(self.dir / "vault")
        self.model: dict[str, bytes] = {}
        self.garbage: set[str] = set()
        self.tampered: dict[str, bytes] = {}
        self.n = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def referenced(self) -> set[str]:
        return {b3(data) for data in self.model.values()}

    # -- actions ---------------------------------------------------------------------------
    @rule(target=committed, data=st.binary(min_size=1, max_size=64))
    def commit(self, data: bytes) -> str:
        return self._commit(data)

    @rule(target=committed, source=committed)
    def commit_copy(self, source: str) -> str:
        # Identical bytes: deduplicated into the existing object (tampered or not).
        return self._commit(self.model[source])

    def _commit(self, data: bytes) -> str:
        sid = f"s{self.n:03d}"
        self.n += 1
        wd = self.vault.new(sid, domain="training", method="fine_tuning")
        (wd / "strata" / "data.bin").write_bytes(data)
        commit = self.vault.commit(sid, message=f"{len(data)} bytes")
        assert commit.tree[DATA].digest == b3(data)
        assert commit.tree[DATA].size == len(data)
        self.model[sid] = data
        self.garbage.discard(b3(data))
        return sid

    @rule(sid=committed)
    def read(self, sid: str) -> None:
        data = self.model[sid]
        spec = self.vault.specimen(sid)
        assert spec.files[DATA].digest == b3(data)
        if b3(data) in self.tampered:
            with pytest.raises(ChecksumMismatch):
                spec.read_bytes(DATA)
        else:
            assert spec.read_bytes(DATA) == data

    @rule(data=st.binary(max_size=64))
    def put_garbage(self, data: bytes) -> None:
        d = self.vault.objects.put_bytes(data)
        assert d == b3(data)
        if d not in self.referenced():
            self.garbage.add(d)

    @rule()
    def gc(self) -> None:
        present = set(self.vault.objects.iter_digests())
        report = self.vault.gc(grace=0)
        after = set(self.vault.objects.iter_digests())
        assert self.referenced() <= after, "gc removed a committed object"
        assert not self.garbage & after, "gc kept garbage"
        assert report.removed_objects == len(present - after) >= len(self.garbage)
        self.garbage.clear()

    @rule(sid=committed)
    def tamper(self, sid: str) -> None:
        d = b3(self.model[sid])
        if d in self.tampered:
            return
        path = self.vault.objects.path(d)
        original = path.read_bytes()
        assert original == self.model[sid]
        os.chmod(path, 0o644)
        path.write_bytes(bytes([original[0] ^ 0x01]) + original[1:])
        self.tampered[d] = original

    @precondition(lambda self: bool(self.tampered))
    @rule()
    def repair(self) -> None:
        for d, original in self.tampered.items():
            path = self.vault.objects.path(d)
            path.write_bytes(original)
            os.chmod(path, 0o444)
        self.tampered.clear()

    @rule()
    def verify(self) -> None:
        report = self.vault.verify()
        assert report.ok == (not self.tampered), report.problems
        corrupt = {p.digest for p in report.problems if p.kind == "corrupt_object"}
        assert corrupt == set(self.tampered)
        assert {p.kind for p in report.problems} <= {"corrupt_object", "workdir_modified"}
        affected = {sid for sid, data in self.model.items() if b3(data) in self.tampered}
        assert {p.specimen for p in report.problems if p.kind == "corrupt_object"} == affected
        unref = [i.count for i in report.info if i.kind == "unreferenced_objects"]
        assert unref == ([len(self.garbage)] if self.garbage else [])
        # A byte flip keeps the size: quick mode cannot see it, and must not invent anything.
        assert self.vault.verify(quick=True).ok

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def refs_match_model(self) -> None:
        refs = self.vault.refs.all()
        assert set(refs) == set(self.model)
        entries = list(self.vault.refs.entries())
        assert [e.specimen_id for e in entries] == sorted(self.model)
        assert {e.specimen_id: e.commit for e in entries} == refs


TestVaultStateMachine = VaultMachine.TestCase
