"""Property tests: for any sequence of specimens and commits, what is committed stays exactly so."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import blake3
from hypothesis import given
from hypothesis import strategies as st

from cas_vault import SpecimenStorage, Vault
from cas_vault.errors import ImmutableError

metric_values = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=20)
specimen = st.fixed_dictionaries({
    "loss": metric_values,
    "config": st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6), max_size=4),
    # Drawn from a small pool so specimens often repeat each other's notes byte for byte.
    "notes": st.sampled_from(["", "same notes", "loss plateaus at 40k\n"]) | st.text(max_size=50),
})

#: Bytes every specimen writes, so every example stores repeated content across specimens.
SHARED = b"identical in every specimen " * 100


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / "objects").rglob("*") if p.is_file()}


@given(st.lists(specimen, min_size=1, max_size=5))
def test_committed_specimens_never_change(specs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        v = Vault.init(Path(tmp) / "v")
        committed: dict[str, dict[str, bytes]] = {}
        refs: dict[str, str] = {}
        for i, spec in enumerate(specs):
            sid = f"s{i}"
            wd = v.new(sid, domain="training", method="fine_tuning")
            s = SpecimenStorage(wd)
            s.write_metrics({"step": list(range(len(spec["loss"]))), "loss": spec["loss"]})
            s.write_config(spec["config"])
            (wd / "field_notes.md").write_text(spec["notes"])
            (wd / "strata" / "shared.bin").write_bytes(SHARED)
            files = {str(p.relative_to(wd)): p.read_bytes() for p in wd.rglob("*")
                     if p.is_file() and ".cas" not in p.parts}
            before = snapshot(v.root)
            c = v.commit(sid)
            refs[sid] = c.digest
            committed[sid] = files
            after = snapshot(v.root)
            # Committing only adds objects; it never changes or removes one.
            assert all(after[k] == b for k, b in before.items())
            # Every attempt to change a committed specimen is refused and changes nothing.
            for other in committed:
                try:
                    v.commit(other)
                except ImmutableError:
                    pass
                else:
                    raise AssertionError("recommit accepted")
            assert snapshot(v.root) == after

        names: dict[str, bytes] = {}
        for rel, data in snapshot(v.root).items():
            digest = os.path.basename(rel)
            # Every object's name is the BLAKE3 of its bytes (an independent hasher).
            assert blake3.blake3(data).hexdigest() == digest
            names[digest] = data
        for sid, files in committed.items():
            assert v.resolve(sid) == refs[sid]
            commit = v.read_commit(refs[sid])
            for rel, data in files.items():
                entry = commit.tree[rel]
                # Reads back byte-identical, from the object store.
                assert v.objects.get(entry.digest) == data
        # Identical content is stored once, across specimens: the store holds exactly one
        # object per distinct file content plus the commit objects, and its bytes on disk are
        # the sum of the distinct contents' sizes, whatever the number of repeats.
        distinct = {blake3.blake3(d).hexdigest(): d for files in committed.values()
                    for d in files.values()}
        commits = {c: v.objects.path(c).read_bytes() for c in refs.values()}
        assert set(names) == set(distinct) | set(commits)
        on_disk = [p.stat() for p in (v.root / "objects").rglob("*") if p.is_file()]
        assert len(on_disk) == len(distinct.keys() | commits.keys())
        assert len({st.st_ino for st in on_disk}) == len(on_disk)  # no object is two names
        assert sum(st.st_size for st in on_disk) == sum(
            len(d) for d in {**distinct, **commits}.values())
        assert blake3.blake3(SHARED).hexdigest() in names  # written len(specs) times, kept once
