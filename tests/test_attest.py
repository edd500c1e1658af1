"""`treeship attest` and `treeship verify-attestation`: SLSA provenance in a signed DSSE envelope.

The envelope is checked independently of treeship: the DSSE PAE is rebuilt here from the
spec, the ed25519 signature is verified with `cryptography`, the GPG one with `gpg --verify`,
and the subject digest is recomputed from the raw `.commit` file in the repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import nacl.signing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import make_tree, ostree

BRANCH = "stage3-sysroot/x86_64"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, written from the spec."""
    return b"DSSEv1 " + str(len(payload_type)).encode() + b" " + payload_type.encode() + b" " + \
        str(len(payload)).encode() + b" " + payload


def read_envelope(path: Path) -> dict:
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1  # one JSON line: .intoto.jsonl
    return json.loads(text)


def statement_of(envelope: dict) -> dict:
    return json.loads(base64.b64decode(envelope["payload"], validate=True))


def write_envelope(path: Path, envelope: dict) -> Path:
    path.write_text(json.dumps(envelope, separators=(",", ":")) + "\n")
    return path


def sign_statement(statement: dict, secret: Path) -> dict:
    """A DSSE envelope made without treeship, signed with an `ostree sign` secret key file."""
    key = nacl.signing.SigningKey(base64.b64decode(secret.read_text().strip())[:32])
    payload = json.dumps(statement).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload)).signature
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": "test", "sig": base64.b64encode(sig).decode()}]}


@pytest.fixture
def released(treeship, tmp_path: Path, repo: Path, manifest_file: Path) -> str:
    return treeship("release", make_tree(tmp_path / "tree"), "--repo", repo, "-b", BRANCH, "--version", "2026.11",
                    "--provenance", manifest_file, "--json").json()["commit"]


@pytest.fixture
def attestation(treeship, tmp_path: Path, repo: Path, released: str, ed25519_key) -> Path:
    out = tmp_path / "release.intoto.jsonl"
    r = treeship("attest", BRANCH, "--repo", repo, "--sign-ed25519", ed25519_key.secret, "-o", out)
    assert r.stdout.startswith(f"Wrote {out}: SLSA provenance v1 for {BRANCH} = {released}")
    return out


def verify(treeship, path: Path, repo: Path, *args: str | Path, rc: int = 0):
    return treeship("verify-attestation", path, "--repo", repo, *args, rc=rc)


# -- the statement ------------------------------------------------------------------------------


def test_statement_is_slsa_provenance_of_the_commit(repo, released, attestation):
    env = read_envelope(attestation)
    assert env["payloadType"] == PAYLOAD_TYPE and len(env["signatures"]) == 1
    st = statement_of(env)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": BRANCH, "digest": {"sha256": released}}]
    assert released == ostree("rev-parse", "--repo", repo, BRANCH).stdout.strip()

    bd = st["predicate"]["buildDefinition"]
    assert bd["buildType"] == "urn:treeship:buildtype:release:v1"
    assert bd["externalParameters"] == {"target": "bootstrap/stage3-sysroot.bst", "project": "baserock",
                                        "options": {"arch": "x86_64"},
                                        "release": {"branch": BRANCH, "version": "2026.11"}}
    assert bd["internalParameters"] == {"provenanceSchema": "treeship.provenance/v1",
                                        "cacheKeys": {"bootstrap/gcc.bst": "a" * 64,
                                                      "bootstrap/binutils.bst": "b" * 64}}
    assert bd["resolvedDependencies"] == [
        {"uri": "git+https://gitlab.example.org/gcc.git@gcc-14.2.0-3-g0123456",
         "digest": {"gitCommit": "0123456789abcdef0123456789abcdef01234567"}, "name": "gcc",
         "annotations": {"element": "bootstrap/gcc.bst", "kind": "git", "ref": "gcc-14.2.0-3-g0123456"}},
        {"uri": "https://ftp.example.org/binutils-2.43.tar.xz", "digest": {"sha256": "c" * 64},
         "name": "binutils-2.43.tar.xz",
         "annotations": {"element": "bootstrap/binutils.bst", "kind": "tar", "ref": "c" * 64}}]
    assert st["predicate"]["runDetails"] == {
        "builder": {"id": "urn:treeship:builder:buildstream", "version": {"treeship": "0.1.0", "buildstream": "1.6.8"}},
        "metadata": {"finishedOn": "2026-11-26T08:00:00Z"}}


def test_subject_digest_is_sha256_of_the_raw_commit_file(repo, released, attestation):
    digest = statement_of(read_envelope(attestation))["subject"][0]["digest"]["sha256"]
    raw = (repo / "objects" / digest[:2] / f"{digest[2:]}.commit").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == digest == released


def test_ed25519_signature_checks_independently_over_pae(attestation, ed25519_key):
    env = read_envelope(attestation)
    pub = base64.b64decode(ed25519_key.public_b64)
    sig = env["signatures"][0]
    assert sig["keyid"] == hashlib.sha256(pub).hexdigest()
    signed = pae(env["payloadType"], base64.b64decode(env["payload"]))
    Ed25519PublicKey.from_public_bytes(pub).verify(base64.b64decode(sig["sig"]), signed)  # raises if bad


def test_sources_without_url_or_digest_are_listed_not_dropped(treeship, tmp_path, repo, ed25519_key):
    m = {"schema": "treeship.provenance/v1", "build": {"tool": "buildstream"},
         "elements": [{"name": "files.bst", "kind": "import",
                       "sources": [{"kind": "local", "path": "files/etc"},
                                   {"kind": "git", "url": "git@example.org:x.git", "ref": "v1", "commit": "f" * 40},
                                   {"kind": "remote", "url": "https://example.org/f.bin", "sha256": "9" * 64}]}]}
    (tmp_path / "m.json").write_text(json.dumps(m))
    treeship("release", make_tree(tmp_path / "tree"), "--repo", repo, "-b", BRANCH, "--provenance",
             tmp_path / "m.json")
    r = treeship("attest", BRANCH, "--repo", repo, "--sign-ed25519", ed25519_key.secret, "-o", "-")
    st = statement_of(json.loads(r.stdout))
    bd = st["predicate"]["buildDefinition"]
    assert bd["internalParameters"] == {"provenanceSchema": "treeship.provenance/v1", "cacheKeys": {},
                                        "sourcesWithoutLocation": [{"element": "files.bst", "source": 1,
                                                                    "kind": "local", "path": "files/etc"}]}
    assert [(d["uri"], d["digest"]) for d in bd["resolvedDependencies"]] == [
        ("git+ssh://git@example.org/x.git@v1", {"gitCommit": "f" * 40}),
        ("https://example.org/f.bin", {"sha256": "9" * 64})]
    assert st["predicate"]["runDetails"] == {"builder": {"id": "urn:treeship:builder:buildstream",
                                                         "version": {"treeship": "0.1.0"}}}


def test_builder_id_option_and_stdout_output(treeship, repo, released, ed25519_key):
    r = treeship("attest", BRANCH, "--repo", repo, "--sign-ed25519", ed25519_key.secret, "-o", "-",
                 "--builder-id", "https://ci.example.org/runners/7")
    assert r.stdout.count("\n") == 1
    assert statement_of(json.loads(r.stdout))["predicate"]["runDetails"]["builder"]["id"] == \
        "https://ci.example.org/runners/7"


# -- verifying ----------------------------------------------------------------------------------


def test_round_trip_verifies(treeship, repo, released, attestation, ed25519_key):
    out = verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public).stdout
    assert out.splitlines()[0] == f"{attestation}:1: OK (https://slsa.dev/provenance/v1)"
    assert f"Good ed25519 signature by {ed25519_key.public_b64}" in out
    assert f"subject {BRANCH} sha256:{released[:12]} = the head of {BRANCH} in {repo}" in out
    data = verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public_b64, "--json").json()
    assert data["ok"] is True
    (env,) = data["envelopes"]
    assert [s["status"] for s in env["signatures"]] == ["good"]
    assert env["subjects"] == [{"name": BRANCH, "digest": released, "expected": released, "ok": True,
                                "detail": f"= the head of {BRANCH} in {repo}"}]
    verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public, "--ref", released)


def test_flipped_payload_byte_is_rejected(treeship, tmp_path, repo, attestation, ed25519_key):
    env = read_envelope(attestation)
    payload = bytearray(base64.b64decode(env["payload"]))
    i = payload.index(b"0123456789abcdef")  # inside the gcc commit: still valid JSON, another commit
    payload[i] ^= 0x01
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    bad = write_envelope(tmp_path / "tampered.intoto.jsonl", env)
    r = verify(treeship, bad, repo, "--ed25519-pubkey", ed25519_key.public, rc=7)
    assert r.stderr == f"treeship: error: {bad}:1: no good signature by a given key\n"
    assert "Unverified ed25519 signature" in r.stdout


def test_flipped_signature_byte_is_rejected(treeship, tmp_path, repo, attestation, ed25519_key):
    env = read_envelope(attestation)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x80
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bad = write_envelope(tmp_path / "tampered.intoto.jsonl", env)
    r = verify(treeship, bad, repo, "--ed25519-pubkey", ed25519_key.public, rc=7)
    assert r.stderr.count("\n") == 1 and "no good signature by a given key" in r.stderr


def test_another_key_is_not_trusted(treeship, repo, attestation, other_ed25519_key):
    r = verify(treeship, attestation, repo, "--ed25519-pubkey", other_ed25519_key.public, rc=7)
    assert "no good signature by a given key" in r.stderr


def test_a_well_signed_statement_for_another_commit_is_rejected(treeship, tmp_path, repo, released, attestation,
                                                                  ed25519_key):
    st = statement_of(read_envelope(attestation))
    st["subject"][0]["digest"]["sha256"] = hashlib.sha256(b"another commit").hexdigest()
    forged = write_envelope(tmp_path / "other.intoto.jsonl", sign_statement(st, ed25519_key.secret))
    r = verify(treeship, forged, repo, "--ed25519-pubkey", ed25519_key.public, rc=7)
    other = st["subject"][0]["digest"]["sha256"]
    assert r.stderr == (f"treeship: error: {forged}:1: attests {other[:12]}, but the head of {BRANCH} is "
                        f"{released[:12]}; {other[:12]} is not in {repo}\n")
    # the same statement, digest restored and signed the same way, passes: an envelope made
    # by another DSSE implementation verifies, so the rejection above is about the digest
    st["subject"][0]["digest"]["sha256"] = released
    ok = write_envelope(tmp_path / "ok.intoto.jsonl", sign_statement(st, ed25519_key.secret))
    verify(treeship, ok, repo, "--ed25519-pubkey", ed25519_key.public)


def test_subject_named_for_another_branch_is_rejected(treeship, tmp_path, repo, released, attestation, ed25519_key):
    st = statement_of(read_envelope(attestation))
    st["subject"][0]["name"] = "other/branch"
    forged = write_envelope(tmp_path / "renamed.intoto.jsonl", sign_statement(st, ed25519_key.secret))
    r = verify(treeship, forged, repo, "--ed25519-pubkey", ed25519_key.public, "--ref", released, rc=7)
    assert f"commit {released[:12]} was released for {BRANCH}, not other/branch" in r.stderr
    r = verify(treeship, forged, repo, "--ed25519-pubkey", ed25519_key.public, rc=7)
    assert f"no branch 'other/branch' in {repo}" in r.stderr


def test_a_moved_branch_does_not_verify_an_older_release(treeship, tmp_path, repo, released, attestation,
                                                         ed25519_key):
    (tmp_path / "tree" / "etc" / "new").write_text("2\n")
    newer = treeship("release", tmp_path / "tree", "--repo", repo, "-b", BRANCH, "--json").json()["commit"]
    r = verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public, rc=7)
    assert r.stderr == (f"treeship: error: {attestation}:1: attests {released[:12]}, but the head of {BRANCH} is "
                        f"{newer[:12]}; {released[:12]} is an earlier release here: verify it with "
                        f"--ref {released[:12]}\n")
    verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public, "--ref", f"{BRANCH}^")
    verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public, "--ref", released[:12])
    r = verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public, "--ref", newer, rc=7)
    assert f"attests {released[:12]}, but {newer} is {newer[:12]}" in r.stderr


def test_gpg_round_trip_and_gpg_verify_agrees(treeship, tmp_path, repo, released, gpg_key, other_gpg_key):
    out = tmp_path / "gpg.intoto.jsonl"
    treeship("attest", BRANCH, "--repo", repo, "--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", gpg_key.homedir,
             "-o", out)
    env = read_envelope(out)
    assert env["signatures"][0]["keyid"] == gpg_key.fingerprint
    (tmp_path / "pae").write_bytes(pae(env["payloadType"], base64.b64decode(env["payload"])))
    (tmp_path / "sig").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    gpg = subprocess.run(["gpg", "--homedir", gpg_key.homedir, "--batch", "--status-fd", "1", "--verify",
                          tmp_path / "sig", tmp_path / "pae"], capture_output=True, text=True, check=False)
    assert gpg.returncode == 0 and f"VALIDSIG {gpg_key.fingerprint}" in gpg.stdout

    text = verify(treeship, out, repo, "--gpg-homedir", gpg_key.homedir).stdout
    assert f"Good gpg signature by Release Signer <release.signer@example.org> ({gpg_key.fingerprint})" in text
    r = verify(treeship, out, repo, "--gpg-homedir", other_gpg_key.homedir, rc=7)
    assert "no good signature by a given key" in r.stderr
    keyring = tmp_path / "trusted.gpg"
    with open(keyring, "wb") as f:
        subprocess.run(["gpg", "--homedir", gpg_key.homedir, "--batch", "--export"], stdout=f, check=True)
    verify(treeship, out, repo, "--gpg-keyring", keyring)

    env["payload"] = base64.b64encode(base64.b64decode(env["payload"]).replace(b"2026.11", b"2026.12")).decode()
    bad = write_envelope(tmp_path / "tampered.intoto.jsonl", env)
    r = verify(treeship, bad, repo, "--gpg-homedir", gpg_key.homedir, rc=7)
    assert r.stderr == f"treeship: error: {bad}:1: bad signature\n"
    assert "BAD gpg signature" in r.stdout


def test_both_kinds_of_signature_in_one_envelope(treeship, tmp_path, repo, released, gpg_key, ed25519_key):
    out = tmp_path / "both.intoto.jsonl"
    treeship("attest", BRANCH, "--repo", repo, "--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", gpg_key.homedir,
             "--sign-ed25519", ed25519_key.secret, "-o", out)
    assert len(read_envelope(out)["signatures"]) == 2
    data = verify(treeship, out, repo, "--ed25519-pubkey", ed25519_key.public, "--json").json()
    assert sorted(s["status"] for s in data["envelopes"][0]["signatures"]) == ["good", "unknown-key"]
    verify(treeship, out, repo, "--ed25519-pubkey", ed25519_key.public, "--gpg-homedir", gpg_key.homedir)


# -- bad input: one line, a documented exit code ------------------------------------------------


def test_bad_input(treeship, tmp_path, repo, released, attestation, ed25519_key):
    def one_line(r) -> str:
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("treeship: error: "), r.stderr
        return r.stderr

    assert "nothing to sign with" in one_line(treeship("attest", BRANCH, "--repo", repo, "-o", "x", rc=2))
    assert "nothing to trust" in one_line(verify(treeship, attestation, repo, rc=2))
    assert "no such file" in one_line(verify(treeship, tmp_path / "nope.jsonl", repo, "--ed25519-pubkey",
                                             ed25519_key.public, rc=2))
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"hello": 1}\n')
    assert "not a DSSE envelope" in one_line(verify(treeship, junk, repo, "--ed25519-pubkey", ed25519_key.public,
                                                    rc=7))
    junk.write_text("not json\n")
    assert "not JSON" in one_line(verify(treeship, junk, repo, "--ed25519-pubkey", ed25519_key.public, rc=7))
    assert "nosuch" in one_line(verify(treeship, attestation, repo, "--ed25519-pubkey", ed25519_key.public,
                                       "--ref", "nosuch", rc=5))
    assert "nosuch" in one_line(treeship("attest", "nosuch", "--repo", repo, "--sign-ed25519",
                                         ed25519_key.secret, "-o", "x", rc=5))
    assert "key" in one_line(treeship("attest", BRANCH, "--repo", repo, "--sign-ed25519", tmp_path / "none.secret",
                                      "-o", "x", rc=6))

    treeship("release", tmp_path / "tree", "--repo", repo, "-b", "bare/branch")
    r = treeship("attest", "bare/branch", "--repo", repo, "--sign-ed25519", ed25519_key.secret, "-o", "x", rc=4)
    assert "no provenance" in one_line(r)
    assert not (tmp_path / "x").exists()
