"""One error hierarchy; each class carries the exit code the CLI maps it to.

The table of exit codes lives here and nowhere else (docs/cli.md repeats it).
"""

from __future__ import annotations

import os
import sys
import unicodedata


class TreeshipError(Exception):
    """A failure the user can act on: printed as one line, never a traceback."""

    exit_code = 1
    #: set by a receiver on an error about its repository itself (not one, not in archive
    #: mode, cannot be created): the pusher then exits with its code (RemoteError)
    destination = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(TreeshipError):
    """A bad argument: a malformed branch name, an option that makes no sense."""

    exit_code = 2


class SourceError(TreeshipError):
    """The tree to release is missing, unreadable or holds what a release cannot."""

    exit_code = 3


class ProvenanceError(TreeshipError):
    """The provenance manifest is unreadable or does not match the schema."""

    exit_code = 4


class RepoError(TreeshipError):
    """The repository is not a repository, or a ref does not exist."""

    exit_code = 5


class SigningError(TreeshipError):
    """A signing key is unknown, unreadable or malformed."""

    exit_code = 6


class VerificationError(TreeshipError):
    """No trusted signature was found, or a bad one was; or an attestation is not about the right commit."""

    exit_code = 7


class StorageError(TreeshipError):
    """Writing failed: to the repository (disk full, I/O error, permissions), or the
    command's output (stdout on a full disk, ``> /dev/full``)."""

    exit_code = 8


class UnchangedError(TreeshipError):
    """The tree is identical to the branch head; nothing was released."""

    exit_code = 9


class PushRejected(TreeshipError):
    """The receiver refused to move one or more refs (policy, signatures, fast-forward)."""

    exit_code = 10

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


def output_failed(e: OSError) -> StorageError:
    """What stdout refusing the output (a full disk, ``> /dev/full``) is said as: the CLI's
    and the process's last flush's words alike."""
    return StorageError(f"cannot write the output: {e.strerror or e}")


class TransferError(TreeshipError):
    """The push could not complete: connection lost, protocol error, remote failure."""

    exit_code = 11


class RemoteError(TransferError):
    """The receiver stopped and said why (its ERROR frame). Where the reason is its
    repository itself — not a repository, or not in archive mode (5); it cannot be created
    (8) — the push exits as the receiver did: a retry alone will not help until someone
    acts there, which exit 11 ("a retry resumes") would not say. Anything else (a full disk
    too: a retry resumes once there is room) stays 11."""

    def __init__(self, message: str, remote_exit_code: object = None) -> None:
        super().__init__(message)
        if type(remote_exit_code) is int and remote_exit_code in (RepoError.exit_code, StorageError.exit_code):
            self.exit_code = remote_exit_code


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error",
    UsageError.exit_code: "bad usage or argument (including a malformed branch name)",
    SourceError.exit_code: "the source tree, archive or BuildStream element is missing, unreadable or unsupported",
    ProvenanceError.exit_code: "the provenance manifest is malformed",
    RepoError.exit_code: "not a repository, or unknown ref",
    SigningError.exit_code: "signing key unknown or malformed",
    VerificationError.exit_code: "signature or attestation verification failed",
    StorageError.exit_code: "writing to the repository, or the output, failed (disk full, I/O)",
    UnchangedError.exit_code: "tree identical to the branch head; nothing released",
    PushRejected.exit_code: "the receiver rejected a ref update (policy, signature, non-fast-forward)",
    TransferError.exit_code: "the push failed: connection lost, protocol error, remote failure",
}


def printable(text: str) -> str:
    """``text`` as one line that cannot drive a terminal, whatever a path, a name or a peer's
    message holds: control characters (escape sequences, newlines), line and paragraph
    separators, and invisible format characters (bidi overrides) are shown escaped."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def report(e: BaseException) -> int:
    """Print what ended the command as one line on stderr; the exit code it maps to.

    Shared by the click CLI and the fast ``treeship receive`` entry, so both speak alike.
    """
    if isinstance(e, TreeshipError):
        say(f"treeship: error: {printable(failure_message(e))}")
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        say(f"treeship: {failure_message(e)}")
        return 130
    if isinstance(e, BrokenPipeError):
        os._exit(0)
    if os.environ.get("TREESHIP_DEBUG"):
        raise e
    say(f"treeship: {failure_message(e)} (set TREESHIP_DEBUG=1 for a traceback)")
    return 1


def failure_message(e: BaseException) -> str:
    """What ended the command, in words: the line report() prints, and --json's message."""
    if isinstance(e, TreeshipError):
        return e.message
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"internal error: {type(e).__name__}: {e}"


def say(line: str) -> None:
    """One line on stderr; a closed stderr must not change the exit code."""
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError):
        pass
