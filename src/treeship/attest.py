"""Attestations: a release's SLSA provenance as a signed in-toto statement, and checking one.

The statement (:mod:`treeship.provenance.slsa`) travels in a DSSE envelope
(https://github.com/secure-systems-lab/dsse): ``payloadType``
``application/vnd.in-toto+json``, ``payload`` the statement's JSON in base64, and one
signature per key over the PAE encoding::

    "DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload

(LEN in ASCII decimal, payload the raw bytes). An ed25519 signature is its raw 64 bytes
(``keyid``: hex sha256 of the 32-byte public key); a GPG signature is a binary OpenPGP
detached signature (``keyid``: the key's fingerprint). The envelope is one line of JSON,
so a ``.intoto.jsonl`` file may hold several.

Verifying checks the signatures first and reads the statement only if one is good; then
each subject's digest must be the commit that ``--ref`` names, or else the current head of
the branch the subject names. So an attestation of an earlier release does not pass for
the branch head: verify it with ``--ref`` naming that release.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, history, signing
from .errors import ProvenanceError, RepoError, StorageError, UsageError, VerificationError
from .provenance import slsa
from .repo import Repo

PAYLOAD_TYPE = "application/vnd.in-toto+json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what every signature signs."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# -- making one ----------------------------------------------------------------------------------


@dataclass
class Attestation:
    branch: str
    commit: str
    envelope: dict[str, Any]
    statement: dict[str, Any]
    signed_by: list[dict[str, str]]

    def line(self) -> str:
        return json.dumps(self.envelope, separators=(",", ":")) + "\n"


def subject_branch(repo: Repo, ref: str, commit: str) -> str:
    """The branch a release was made for: REF itself if it is a branch, else the commit's ref-binding."""
    if ref in repo.refs():
        return ref
    binding = history.record(repo, commit).ref_binding
    if binding:
        return binding[0]
    raise UsageError(f"{ref}: cannot tell which branch this release belongs to (no ostree.ref-binding); "
                     "name the branch instead")


def attest(repo: Repo, ref: str, *, ed25519_files: list[str], gpg_keys: list[str], gpg_homedir: str | None,
           builder_id: str | None = None) -> Attestation:
    if not ed25519_files and not gpg_keys:
        raise UsageError("nothing to sign with: give --sign-ed25519 FILE or --gpg-sign KEYID")
    secrets = [signing.load_ed25519_secret(f) for f in ed25519_files]
    commit = repo.require(ref)
    manifest = history.provenance(repo, commit)
    if manifest is None:
        raise ProvenanceError(f"{ref}: this release carries no provenance manifest; nothing to attest")
    branch = subject_branch(repo, ref, commit)
    rec = history.record(repo, commit)
    statement = slsa.statement(manifest, branch=branch, commit=commit, version=rec.version,
                               tool_version=__version__, builder_id=builder_id)
    payload = json.dumps(statement, separators=(",", ":"), ensure_ascii=False).encode()
    signed = pae(PAYLOAD_TYPE, payload)
    sigs: list[dict[str, str]] = []
    who: list[dict[str, str]] = []
    for secret in secrets:
        keyid = signing.ed25519_keyid(bytes(secret.signing_key.verify_key))
        sigs.append({"keyid": keyid, "sig": base64.b64encode(signing.ed25519_sign_data(secret, signed)).decode()})
        who.append({"type": "ed25519", "keyid": keyid, "key": secret.public_b64})
    for key_id in gpg_keys:
        raw, fingerprint = signing.gpg_sign_data(repo, signed, key_id, gpg_homedir)
        sigs.append({"keyid": fingerprint, "sig": base64.b64encode(raw).decode()})
        who.append({"type": "gpg", "keyid": fingerprint, "key": fingerprint})
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": sigs}
    return Attestation(branch, commit, envelope, statement, who)


def write(att: Attestation, output: str) -> None:
    """Write the envelope as one JSON line; ``-`` is stdout. A file is replaced atomically."""
    if output == "-":
        try:
            sys.stdout.write(att.line())
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as e:  # a full disk, > /dev/full: said as what it is, not an internal error
            raise StorageError(f"cannot write the attestation to stdout: {e.strerror or e}") from None
        return
    dest = Path(output)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(att.line(), "utf-8")
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{output}: cannot write: {e.strerror}") from None


# -- checking one --------------------------------------------------------------------------------


@dataclass
class SubjectCheck:
    name: str
    digest: str
    expected: str | None
    ok: bool
    detail: str


@dataclass
class EnvelopeCheck:
    line: int
    signatures: list[signing.SignatureCheck]
    predicate_type: str | None = None
    subjects: list[SubjectCheck] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        good = any(s.status == "good" for s in self.signatures)
        bad = any(s.status == "bad" for s in self.signatures)
        return (self.problem is None and good and not bad and bool(self.subjects)
                and all(s.ok for s in self.subjects))

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "ok": self.ok, "problem": self.problem, "predicateType": self.predicate_type,
                "signatures": [s.to_dict() for s in self.signatures], "subjects": [asdict(s) for s in self.subjects]}


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise VerificationError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # DSSE allows URL-safe base64 too
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise VerificationError(f"{what} is not valid base64") from None


def read_envelopes(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    envelopes = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            env = json.loads(line)
        except json.JSONDecodeError as e:
            raise VerificationError(f"{p}: line {n}: not JSON: {e.msg}") from None
        if not isinstance(env, dict) or not {"payloadType", "payload", "signatures"} <= env.keys() \
                or not isinstance(env["signatures"], list):
            raise VerificationError(f"{p}: line {n}: not a DSSE envelope (payloadType, payload, signatures)")
        envelopes.append(env)
    if not envelopes:
        raise VerificationError(f"{p}: no DSSE envelope in it")
    return envelopes


def check_signatures(repo: Repo, env: dict[str, Any], *, ed25519_keys: list[bytes], gpg_homedir: str | None,
                     gpg_keyring: str | None) -> tuple[list[signing.SignatureCheck], bytes]:
    """Each DSSE signature checked over PAE(payloadType, payload); returns them and the payload."""
    if not isinstance(env["payloadType"], str):
        raise VerificationError("payloadType is not a string")
    payload = _b64(env["payload"], "payload")
    signed = pae(env["payloadType"], payload)
    checks = []
    for i, s in enumerate(env["signatures"]):
        if not isinstance(s, dict):
            raise VerificationError(f"signature {i + 1} is not an object")
        sig = _b64(s.get("sig"), f"signature {i + 1}")
        if len(sig) == 64:  # raw ed25519; an OpenPGP signature is longer
            check = signing.ed25519_check_data(signed, sig, ed25519_keys)
        else:
            check = signing.gpg_check_data(repo, signed, sig, gpg_homedir, gpg_keyring)
        if check.status != "good" and isinstance(s.get("keyid"), str) and s["keyid"]:
            check.detail = f"keyid {s['keyid']}" + (f": {check.detail}" if check.detail else "")
        checks.append(check)
    return checks, payload


def check_subject(repo: Repo, subject: Any, ref: str | None) -> SubjectCheck:
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict):
        return SubjectCheck(str(subject), "", None, False, "malformed subject")
    name = str(subject.get("name", ""))
    digest = subject["digest"].get("sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        return SubjectCheck(name, str(digest), None, False, "no sha256 digest (an OSTree commit checksum)")
    if ref is not None:
        expected, where = repo.require(ref), ref
    else:
        try:
            expected = repo.head(name)  # the subject names a branch
        except RepoError:
            expected = None
        if expected is None:
            return SubjectCheck(name, digest, None, False, f"no branch {name!r} in {repo.path}")
        where = f"the head of {name}"
    if digest != expected:
        hint = (f"; {digest[:12]} is an earlier release here: verify it with --ref {digest[:12]}"
                if repo.has_commit(digest) else f"; {digest[:12]} is not in {repo.path}")
        return SubjectCheck(name, digest, expected, False,
                            f"attests {digest[:12]}, but {where} is {expected[:12]}{hint if ref is None else ''}")
    if hashlib.sha256(repo.commit_bytes(expected)).hexdigest() != digest:
        return SubjectCheck(name, digest, expected, False, f"commit object {expected[:12]} is corrupt in {repo.path}")
    binding = history.record(repo, expected).ref_binding
    if binding and name not in binding:
        return SubjectCheck(name, digest, expected, False,
                            f"commit {expected[:12]} was released for {', '.join(binding)}, not {name}")
    return SubjectCheck(name, digest, expected, True, f"= {where} in {repo.path}")


def verify(repo: Repo, path: str, *, ed25519_keys: list[bytes], gpg_homedir: str | None = None,
           gpg_keyring: str | None = None, ref: str | None = None) -> list[EnvelopeCheck]:
    """Every envelope of the file; each is ok only if signed by a given key and about the right commit."""
    if ref is not None:
        repo.require(ref)  # an unknown --ref is the user's mistake (exit 5), not a failed verification
    out = []
    for n, env in enumerate(read_envelopes(path), 1):
        try:
            sigs, payload = check_signatures(repo, env, ed25519_keys=ed25519_keys, gpg_homedir=gpg_homedir,
                                             gpg_keyring=gpg_keyring)
        except VerificationError as e:
            out.append(EnvelopeCheck(n, [], problem=e.message))
            continue
        check = EnvelopeCheck(n, sigs)
        out.append(check)
        if not any(s.status == "good" for s in sigs) or any(s.status == "bad" for s in sigs):
            check.problem = "no good signature by a given key" if not any(s.status == "bad" for s in sigs) \
                else "bad signature"
            continue  # an unauthenticated payload is not read
        if env["payloadType"] != PAYLOAD_TYPE:
            check.problem = f"payloadType is {env['payloadType']!r}, not {PAYLOAD_TYPE}"
            continue
        try:
            statement = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            check.problem = "payload is not JSON"
            continue
        if not isinstance(statement, dict) or statement.get("_type") != slsa.STATEMENT_TYPE:
            check.problem = f"payload is not an in-toto Statement v1 ({slsa.STATEMENT_TYPE})"
            continue
        check.predicate_type = statement.get("predicateType")
        subjects = statement.get("subject")
        if not isinstance(subjects, list) or not subjects:
            check.problem = "the statement has no subject"
            continue
        check.subjects = [check_subject(repo, s, ref) for s in subjects]
    return out
