"""SAE weights: one validated float32 container and its loaders.

An SAE is ``W_enc`` [d, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d], ``b_dec`` [d] and, for
a JumpReLU SAE, ``threshold`` [d_sae] (a plain ReLU SAE has none). Loaders:

- :func:`load_sae_from_specimen`: tensors of a committed specimen (read through the vault);
- :func:`load_sae_npz`: a ``.npz`` file with those names (Gemma Scope's ``params.npz`` layout);
- :func:`load_sae_safetensors`: a ``.safetensors`` file, via ``safetensors.numpy`` (extra ``sae``).

A pretrained release (e.g. from a model hub) is used by exporting its weights to one of those
files or committing them as an SAE specimen, which also makes the SAE a parent of every result.

Every loader returns an :class:`SAE` whose :attr:`SAE.digest` names its weights' content, so a
derived specimen records exactly which weights produced it, wherever they came from.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...digest import Digest, Hasher, hash_file
from ...errors import InvalidInputError, NotFoundError
from .tensor import open_tensor

if TYPE_CHECKING:
    import numpy as np

    from ...specimen import CommittedSpecimen

__all__ = [
    "SAE",
    "SAE_TENSORS",
    "load_sae",
    "load_sae_file",
    "load_sae_from_specimen",
    "load_sae_npz",
    "load_sae_safetensors",
    "weights_digest",
]

#: Tensor names an SAE specimen or file holds; ``threshold`` is optional (JumpReLU only).
SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
_REQUIRED = SAE_TENSORS[:4]


@dataclass(frozen=True, eq=False)
class SAE:
    """A sparse autoencoder's weights, validated and cast to C-contiguous float32.

    Build it with :meth:`from_arrays` (or a loader), not the constructor.

    Attributes:
        W_enc: encoder [d, d_sae].
        b_enc: encoder bias [d_sae].
        W_dec: decoder [d_sae, d].
        b_dec: decoder bias [d].
        threshold: JumpReLU thresholds [d_sae], or None for a ReLU SAE.
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (the seed's formula; some SAEs
            are trained without it).
        source: where the weights came from (for the manifest), e.g. ``specimen:my_sae``.
        digest: BLAKE3 of the weights' canonical serialisation (:func:`weights_digest`).
        info: extra provenance (commit digest, file digest...).
    """

    W_enc: np.ndarray
    b_enc: np.ndarray
    W_dec: np.ndarray
    b_dec: np.ndarray
    threshold: np.ndarray | None
    apply_b_dec_to_input: bool
    source: str
    digest: Digest
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Any],
        *,
        source: str = "arrays",
        apply_b_dec_to_input: bool = True,
        info: Mapping[str, Any] | None = None,
    ) -> SAE:
        """Validate and wrap SAE weights.

        Args:
            arrays: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and optionally ``threshold``
                (anything ``numpy.asarray`` accepts); other keys are ignored.
            source: provenance string recorded in the manifest.
            apply_b_dec_to_input: whether encoding subtracts ``b_dec`` first.
            info: extra provenance.

        Returns:
            The SAE, every array float32 and C-contiguous.

        Raises:
            InvalidInputError: a missing tensor, wrong shapes (naming them), non-finite values,
                or non-numeric dtypes.
        """
        import numpy as np

        missing = [n for n in _REQUIRED if n not in arrays]
        if missing:
            raise InvalidInputError(
                f"SAE from {source} lacks tensor(s) {', '.join(missing)}; an SAE needs "
                "W_enc [d, d_sae], b_enc [d_sae], W_dec [d_sae, d], b_dec [d] and optionally "
                "threshold [d_sae]"
            )
        out: dict[str, np.ndarray | None] = {}
        for name in SAE_TENSORS:
            value = arrays.get(name)
            if value is None:
                out[name] = None
                continue
            a = np.asarray(value)
            if a.dtype.kind not in "fiu":
                raise InvalidInputError(f"SAE tensor {name} from {source} has dtype {a.dtype}; it must be numeric")
            a = np.ascontiguousarray(a, dtype=np.float32)
            if not np.isfinite(a).all():
                raise InvalidInputError(f"SAE tensor {name} from {source} holds NaN or inf values")
            out[name] = a
        w_enc, b_enc, w_dec, b_dec, thr = (out[n] for n in SAE_TENSORS)
        assert w_enc is not None and b_enc is not None and w_dec is not None and b_dec is not None
        if w_enc.ndim != 2:
            raise InvalidInputError(f"SAE W_enc from {source} must be 2-d [d, d_sae], got shape {w_enc.shape}")
        d, d_sae = w_enc.shape
        expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d), "b_dec": (d,), "threshold": (d_sae,)}
        for name, shape in expected.items():
            a = out[name]
            if a is not None and a.shape != shape:
                hint = " (is it transposed?)" if a.shape == shape[::-1] and len(shape) == 2 else ""
                raise InvalidInputError(
                    f"SAE tensor {name} from {source} has shape {a.shape}, expected {shape} "
                    f"for W_enc of shape {w_enc.shape}{hint}"
                )
        if d == 0 or d_sae == 0:
            raise InvalidInputError(f"SAE from {source} has an empty dimension: W_enc shape {w_enc.shape}")
        digest = weights_digest({n: out[n] for n in SAE_TENSORS}, apply_b_dec_to_input)
        return cls(w_enc, b_enc, w_dec, b_dec, thr, bool(apply_b_dec_to_input), source, digest,
                   dict(info or {}))

    @property
    def d(self) -> int:
        """Input (model) dimension."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.W_enc.shape[1])

    @property
    def activation(self) -> str:
        """``"jumprelu"`` if it has thresholds, else ``"relu"``."""
        return "jumprelu" if self.threshold is not None else "relu"

    def describe(self) -> dict[str, Any]:
        """The manifest record of this SAE (msgpack-able)."""
        return {
            "digest": self.digest, "source": self.source, "d": self.d, "d_sae": self.d_sae,
            "activation": self.activation, "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "dtype": "float32", **self.info,
        }


def weights_digest(arrays: Mapping[str, np.ndarray | None], apply_b_dec_to_input: bool = True) -> Digest:
    """BLAKE3 of the SAE's float32 weights, independent of the file format they came in.

    Serialisation: for each of ``W_enc, b_enc, W_dec, b_dec, threshold`` in this order, the
    line ``<name> <shape as comma-separated ints>\\n`` (``<name> absent\\n`` for a missing
    threshold) followed by the little-endian float32 C-order bytes; then
    ``apply_b_dec_to_input <0|1>\\n``.
    """
    import numpy as np

    h = Hasher()
    for name in SAE_TENSORS:
        a = arrays.get(name)
        if a is None:
            h.update(f"{name} absent\n".encode())
            continue
        a = np.ascontiguousarray(a, dtype="<f4")
        h.update(f"{name} {','.join(str(s) for s in a.shape)}\n".encode())
        h.update(memoryview(a).cast("B"))
    h.update(f"apply_b_dec_to_input {int(bool(apply_b_dec_to_input))}\n".encode())
    return h.hexdigest()


def load_sae_from_specimen(spec: CommittedSpecimen, *, apply_b_dec_to_input: bool = True) -> SAE:
    """Load an SAE from a committed specimen's tensors ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``
    and (optionally) ``threshold``.

    Raises:
        InvalidInputError: if the specimen lacks a required tensor or shapes disagree.
    """
    arrays: dict[str, Any] = {}
    for name in SAE_TENSORS:
        try:
            arrays[name] = open_tensor(spec, name)[...]
        except NotFoundError:
            if name != "threshold":
                raise InvalidInputError(
                    f"specimen {spec.specimen_id} has no tensor {name!r}, so it is not an SAE; "
                    "an SAE specimen holds tensors W_enc [d, d_sae], b_enc, W_dec [d_sae, d], "
                    "b_dec and optionally threshold"
                ) from None
    return SAE.from_arrays(
        arrays, source=f"specimen:{spec.specimen_id}", apply_b_dec_to_input=apply_b_dec_to_input,
        info={"specimen_id": spec.specimen_id, "commit": spec.commit.digest},
    )


def load_sae_npz(path: str | Path, *, apply_b_dec_to_input: bool = True) -> SAE:
    """Load an SAE from a ``.npz`` file (e.g. Gemma Scope's ``params.npz``).

    The archive is read without ``numpy.load``: each ``.npy`` member's header is checked
    against the member's size before anything is allocated, so a file that is not an npz, a
    damaged zip, a pickled member or a header claiming petabytes is refused with a message.

    Raises:
        NotFoundError: if the file is missing. InvalidInputError: if it is not a valid SAE.
    """
    path = _existing(path)
    arrays = _read_npz(path)
    return SAE.from_arrays(arrays, source=f"npz:{path.name}", apply_b_dec_to_input=apply_b_dec_to_input,
                           info=_file_info(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the SAE tensors of an npz archive (a zip of ``<name>.npy`` files).

    Raises:
        InvalidInputError: if the file is not such an archive or a tensor member is damaged.
    """
    hint = ("an SAE .npz is a zip of .npy arrays named W_enc, b_enc, W_dec, b_dec[, threshold], "
            "as numpy.savez writes it")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not a readable .npz file ({exc}); {hint}") from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name not in SAE_TENSORS or name in arrays:
                continue
            try:
                arrays[name] = _read_npy_member(archive, info)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}: {info.filename} {exc}; {hint}") from None
            # zipfile, zlib and numpy's header parser each raise their own errors for damaged
            # bytes (BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError for an
            # unknown compression, RuntimeError for encryption): all mean the same here.
            except Exception as exc:
                raise InvalidInputError(
                    f"{path}: {info.filename} cannot be read ({type(exc).__name__}: {exc}); {hint}"
                ) from None
        if not arrays:
            members = [i.filename for i in archive.infolist()]
            listed = ", ".join(members[:5]) + (" ..." if len(members) > 5 else "")
            raise InvalidInputError(
                f"{path} holds no SAE tensor (its members: {listed or 'none'}); {hint}"
            )
    return arrays


def _read_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before its data is read."""
    import math

    import numpy as np
    from numpy.lib import format as npy

    with archive.open(info) as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = npy.read_array_header_2_0(f)
        else:
            raise InvalidInputError(f"has .npy format version {version}, not 1.0, 2.0 or 3.0")
        if dtype.hasobject:
            raise InvalidInputError("holds Python objects (a pickle), which are never loaded")
        if any(n < 0 for n in shape):
            raise InvalidInputError(f"declares the impossible shape {shape}")
        expected = math.prod(shape) * dtype.itemsize
        header = f.tell()
        if info.file_size - header != expected:
            raise InvalidInputError(
                f"declares shape {shape} of {dtype} ({expected:,} bytes) but holds "
                f"{max(0, info.file_size - header):,} bytes of data: it is truncated or damaged"
            )
        data = bytearray(expected)  # writable, like what numpy.load returns
        got = f.readinto(data)
        f.read(1)  # reach the end, where zipfile checks the CRC
    if got != expected:
        raise InvalidInputError(f"ended after {got:,} of {expected:,} bytes of data")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def load_sae_safetensors(path: str | Path, *, apply_b_dec_to_input: bool = True) -> SAE:
    """Load an SAE from a ``.safetensors`` file through ``safetensors.numpy`` (no torch).

    Raises:
        NotFoundError: if the file is missing.
        InvalidInputError: if safetensors is not installed (``pip install cas-vault[sae]``), the
            file is unreadable (e.g. bfloat16, which numpy cannot hold), or not a valid SAE.
    """
    path = _existing(path)
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InvalidInputError(
            f"reading {path.name} needs the safetensors package: pip install 'cas-vault[sae]'"
        ) from None
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError and TypeError
        raise InvalidInputError(f"{path} is not a readable safetensors file ({exc})") from None
    return SAE.from_arrays(arrays, source=f"safetensors:{path.name}",
                           apply_b_dec_to_input=apply_b_dec_to_input, info=_file_info(path))


def load_sae_file(path: str | Path, *, apply_b_dec_to_input: bool = True) -> SAE:
    """Load an SAE file by extension: ``.npz`` or ``.safetensors``.

    Raises:
        InvalidInputError: for another extension. NotFoundError: if missing.
    """
    path = Path(path)
    loaders: dict[str, Callable[..., SAE]] = {".npz": load_sae_npz, ".safetensors": load_sae_safetensors}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise InvalidInputError(
            f"{path.name}: SAE files must end in .npz or .safetensors (or commit the weights as "
            "a specimen with tensors W_enc, b_enc, W_dec, b_dec[, threshold])"
        )
    return loader(path, apply_b_dec_to_input=apply_b_dec_to_input)


def load_sae(
    vault: Any, sae: SAE | str | Path, *, apply_b_dec_to_input: bool = True
) -> tuple[SAE, str | None]:
    """Resolve the ``sae`` argument of the engine.

    Args:
        vault: the vault (for specimen ids).
        sae: an :class:`SAE`, a committed specimen id (a ``str``), or a
            :class:`~pathlib.Path` to a ``.npz`` / ``.safetensors`` file.
        apply_b_dec_to_input: see :class:`SAE` (ignored for a ready :class:`SAE`).

    Returns:
        The SAE and the specimen id it came from (None unless it is a specimen).

    Raises:
        NotFoundError, InvalidInputError: as the loaders.
    """
    if isinstance(sae, SAE):
        return sae, sae.info.get("specimen_id")
    if isinstance(sae, Path):
        return load_sae_file(sae, apply_b_dec_to_input=apply_b_dec_to_input), None
    if isinstance(sae, str):
        return load_sae_from_specimen(vault.specimen(sae), apply_b_dec_to_input=apply_b_dec_to_input), sae
    raise InvalidInputError(
        f"sae must be an SAE, a specimen id or a Path to a .npz/.safetensors file, not {type(sae).__name__}"
    )


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise InvalidInputError(f"SAE file {path} is not a regular file")
        raise NotFoundError(f"SAE file {path} does not exist")
    return path


def _file_info(path: Path) -> dict[str, Any]:
    digest, size = hash_file(path)
    return {"file": path.name, "file_digest": digest, "file_bytes": size}
