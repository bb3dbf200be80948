"""The one error tree of cas-vault.

Every error the library raises derives from :class:`VaultError`. Errors are grouped by what
a caller would do about them, and each category maps to one CLI exit code::

    VaultError                      (exit 2 unless a subclass says otherwise)
    +-- InvalidInputError           bad id, bad manifest, bad data   (also ValueError)
    |   +-- InvalidIdError          a specimen id that is not allowed
    |   +-- TaxonomyError           a domain/method pair outside the taxonomy
    +-- NotFoundError               no such vault, specimen, object, result
    |                               (also FileNotFoundError and KeyError)
    +-- AlreadyExistsError          a ref, specimen or result that exists already
    |   |                           (also RuntimeError: a refused write)
    |   +-- ImmutableError          an attempt to change something committed
    +-- IntegrityError              bytes that do not match their digest (exit 1)
    |   +-- ChecksumMismatch        expected vs. actual digest, kept as attributes
    |   +-- JournalRolledBackError  the journal lost lines a witness saw (exit 1)
    +-- LockTimeoutError            another process holds the vault lock too long
    +-- FileChangedError            a working file changed while it was being committed
    +-- RunFailedError              a protocol exited non-zero; nothing committed (exit 3)
    +-- QueryTimeoutError           a query ran longer than its timeout; cancelled (exit 124)
    +-- QueryInterruptedError       Ctrl-C cancelled `vault query` (exit 130)

The builtin bases let code written against the original's storage API catch what it always
caught: ``FileNotFoundError`` for anything missing, ``RuntimeError`` for a refused write.

Messages say what was wrong and what to do about it; the CLI prints them as they are.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ChecksumMismatch",
    "FileChangedError",
    "ImmutableError",
    "IntegrityError",
    "JournalRolledBackError",
    "InvalidIdError",
    "InvalidInputError",
    "LockTimeoutError",
    "NotFoundError",
    "QueryInterruptedError",
    "QueryTimeoutError",
    "RunFailedError",
    "TaxonomyError",
    "VaultError",
]


class VaultError(Exception):
    """Root of every error cas-vault raises.

    Attributes:
        exit_code: the exit code the CLI uses for this kind of error.
    """

    exit_code: int = 2


class InvalidInputError(VaultError, ValueError):
    """The caller passed something that cannot be accepted; nothing was written."""


class InvalidIdError(InvalidInputError):
    """A specimen id that could escape a directory or break a SQL identifier."""


class TaxonomyError(InvalidInputError):
    """A domain/method pair that the taxonomy does not allow."""


class NotFoundError(VaultError, FileNotFoundError, KeyError):
    """A vault, specimen, commit, object or result that does not exist.

    A ``FileNotFoundError`` too: the original's protocols catch that for a missing result. Its
    ``errno`` and ``filename`` are None: it names a missing thing, not a failed system call.
    """

    def __str__(self) -> str:
        # KeyError would repr() the message, and OSError would format several args as
        # "[Errno x] y"; print the message as it was written.
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(VaultError, RuntimeError):
    """Something that may be created only once exists already.

    A ``RuntimeError`` too: the original's protocols catch that for a refused write.
    """


class ImmutableError(AlreadyExistsError):
    """An attempt to change or remove something that is committed."""


class IntegrityError(VaultError):
    """Stored bytes do not match what was recorded for them."""

    exit_code = 1


class ChecksumMismatch(IntegrityError):
    """Bytes whose BLAKE3 digest differs from the one they were stored under.

    Attributes:
        expected: the digest the bytes were named or recorded with.
        got: the digest of the bytes actually found.
    """

    def __init__(self, expected: str, got: str, what: str = "object", incoming: bool = False) -> None:
        self.expected = expected
        self.got = got
        self.what = what
        self.incoming = incoming
        if incoming:  # bytes offered to the vault: nothing stored is damaged, nothing was written
            advice = ("nothing was stored; the data was changed in transit or the expected digest "
                      "is wrong: check where both came from and try again")
        else:
            advice = "the bytes were altered or truncated: run `vault verify` to see everything affected"
        super().__init__(f"{what} should have BLAKE3 {expected} but its bytes hash to {got}; {advice}")

    def __reduce__(self):  # keep pickling working with the custom __init__
        return (type(self), (self.expected, self.got, self.what, self.incoming))


class JournalRolledBackError(IntegrityError):
    """The journal no longer holds a line that a witness recorded: lines were removed or
    rewritten. Nothing derived from the journal is rebuilt over it unless asked explicitly."""


class LockTimeoutError(VaultError):
    """Another process held the vault lock for longer than we were willing to wait."""


class FileChangedError(VaultError):
    """A working file was written, truncated or replaced while a commit copied it.

    Nothing is sealed; committing again once the writer has finished succeeds.
    """


class RunFailedError(VaultError):
    """A protocol run by ``vault run`` exited with a non-zero status; nothing was committed.

    Not bad input (exit 2) and not damaged bytes (exit 1): the experiment itself failed, so the
    CLI exits with 3. The specimen stays uncommitted with its output in ``run.log``.

    Attributes:
        specimen_id: the specimen whose protocol failed.
        status: the protocol's exit status (negative: killed by that signal).
        log_path: where its combined stdout/stderr was written.
    """

    exit_code = 3

    def __init__(self, specimen_id: str, status: int, log_path: str, tail: str = "") -> None:
        self.specimen_id = specimen_id
        self.status = status
        self.log_path = log_path
        self.tail = tail
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        shown = f"\nLast output:\n{tail}" if tail else ""
        super().__init__(
            f"protocol of {specimen_id} {how}; nothing was committed. Its full output is in "
            f"{log_path}. Fix it and `vault run {specimen_id}` again, or seal what it wrote as "
            f"a partial specimen with `vault commit {specimen_id} --partial`.{shown}"
        )

    def __reduce__(self):  # keep pickling working with the custom __init__
        return (type(self), (self.specimen_id, self.status, self.log_path, self.tail))


class QueryTimeoutError(VaultError):
    """A catalog query ran longer than the timeout it was given and was cancelled.

    Not bad input: the same query may finish with a longer timeout or on a quieter machine. The
    CLI exits with 124, as GNU ``timeout`` does.

    Attributes:
        timeout: the timeout in seconds.
    """

    exit_code = 124

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            f"the query ran longer than its timeout of {timeout:g} s and was cancelled; nothing "
            "was written. Narrow it (a WHERE clause, a LIMIT) or give it more time with --timeout"
        )

    def __reduce__(self):  # keep pickling working with the custom __init__
        return (type(self), (self.timeout,))


class QueryInterruptedError(VaultError):
    """``vault query`` was interrupted (Ctrl-C, SIGINT); the query was cancelled.

    The library raises :class:`KeyboardInterrupt` itself, once the query has stopped; the CLI
    turns it into this error to exit with 130 (128 + SIGINT) and a message.
    """

    exit_code = 130
