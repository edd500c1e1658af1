"""Signatures: GPG (checked by `ostree show` and by `ostree pull` over HTTP), ed25519 (checked
with the `cryptography` package over the raw `.commit` bytes), and `treeship verify`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from gi.repository import GLib

from conftest import make_tree, ostree, treeship_command

BRANCH = "demo/x86_64"


# -- helpers --------------------------------------------------------------------------------


def rev_parse(repo: Path, ref: str) -> str:
    return ostree("rev-parse", "--repo", repo, ref).stdout.strip()


def object_path(repo: Path, checksum: str, suffix: str) -> Path:
    """An archive repo's loose object file: objects/XX/REST.SUFFIX."""
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def detached(repo: Path, checksum: str) -> dict:
    """The .commitmeta file parsed as an a{sv} GVariant by GLib (not by libostree or treeship)."""
    raw = object_path(repo, checksum, "commitmeta").read_bytes()
    v = GLib.Variant.new_from_bytes(GLib.VariantType("a{sv}"), GLib.Bytes.new(raw), False)
    assert v.is_normal_form()
    out = {}
    for i in range(v.n_children()):
        key = v.get_child_value(i).get_child_value(0).get_string()
        val = v.get_child_value(i).get_child_value(1).get_variant()
        out[key] = val
    return out


def aay(v: GLib.Variant) -> list[bytes]:
    assert v.get_type_string() == "aay"
    return [bytes(v.get_child_value(i).get_data_as_bytes().get_data() or b"") for i in range(v.n_children())]


def write_detached(repo: Path, checksum: str, entries: dict[str, GLib.Variant]) -> None:
    data = GLib.Variant("a{sv}", entries).get_data_as_bytes().get_data()
    object_path(repo, checksum, "commitmeta").write_bytes(bytes(data))


def release(treeship, tree: Path, repo: Path, *args: str | Path, branch: str = BRANCH, version: str = "1") -> str:
    return treeship("release", tree, "--repo", repo, "-b", branch, "--version", version, "--allow-unchanged",
                    *args, "--json").json()["commit"]


def gpg_args(key) -> list[str | Path]:
    return ["--gpg-sign", key.fingerprint, "--gpg-homedir", key.homedir]


def export_gpg(key, dest: Path) -> Path:
    with dest.open("wb") as f:
        subprocess.run(["gpg", "--homedir", str(key.homedir), "--batch", "--export", key.fingerprint],
                       stdout=f, check=True)
    assert dest.stat().st_size > 0
    return dest


# -- an HTTP server for `ostree pull` --------------------------------------------------------


def _wait_for_port(proc: subprocess.Popen[str], port: int, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"http.server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"http.server not accepting connections on port {port}") from None
            time.sleep(0.02)  # polling interval, not a wait for something to happen


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], str]]:
    """Serve a directory over HTTP on 127.0.0.1 (a free port); return its URL. Stopped at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def serve(directory: Path) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..." once it listens.
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            raise RuntimeError("http.server did not say which port it listens on")
        line = proc.stdout.readline()
        sel.close()
        m = re.search(r"port (\d+)", line)
        if not m:
            raise RuntimeError(f"http.server: unexpected output {line!r}")
        port = int(m[1])
        _wait_for_port(proc, port, deadline)
        return f"http://127.0.0.1:{port}"

    yield serve
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def client_repo(path: Path, url: str, keyfile: Path) -> Path:
    ostree("init", "--repo", path, "--mode=archive")
    ostree("remote", "add", "--repo", path, f"--gpg-import={keyfile}", "origin", url)  # gpg-verify on by default
    return path


# -- GPG --------------------------------------------------------------------------------------


def test_gpg_signature_good_for_ostree_show(treeship, sample_tree, repo, gpg_key):
    out = treeship("release", sample_tree, "--repo", repo, "-b", BRANCH, "--version", "1", *gpg_args(gpg_key),
                   "--json").json()
    assert out["signatures"] == [{"type": "gpg", "key": gpg_key.fingerprint}]
    shown = ostree("show", "--repo", repo, "--gpg-homedir", gpg_key.homedir, BRANCH).stdout
    assert "Good signature" in shown
    assert gpg_key.fingerprint[-16:] in shown.replace(" ", "")
    entries = detached(repo, out["commit"])
    assert set(entries) == {"ostree.gpgsigs"}
    assert len(aay(entries["ostree.gpgsigs"])) == 1


def test_gpg_signature_checked_by_gpg_itself(treeship, sample_tree, repo, gpg_key, tmp_path):
    commit = release(treeship, sample_tree, repo, *gpg_args(gpg_key))
    (sig,) = aay(detached(repo, commit)["ostree.gpgsigs"])
    sig_file = tmp_path / "commit.sig"
    sig_file.write_bytes(sig)
    res = subprocess.run(["gpg", "--homedir", str(gpg_key.homedir), "--batch", "--status-fd", "1", "--verify",
                          str(sig_file), str(object_path(repo, commit, "commit"))],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert f"VALIDSIG {gpg_key.fingerprint}" in res.stdout


def test_ostree_pull_over_http_verifies_gpg(treeship, sample_tree, repo, gpg_key, other_gpg_key, tmp_path,
                                            http_server):
    signed = release(treeship, sample_tree, repo, *gpg_args(gpg_key))
    unsigned = release(treeship, sample_tree, repo, branch="unsigned/x86_64")
    url = http_server(repo)

    client = client_repo(tmp_path / "client", url, export_gpg(gpg_key, tmp_path / "release.gpg"))
    ostree("pull", "--repo", client, "origin", BRANCH)
    assert rev_parse(client, f"origin:{BRANCH}") == signed
    assert "no errors found" in ostree("fsck", "--repo", client).stdout

    res = ostree("pull", "--repo", client, "origin", "unsigned/x86_64", check=False)
    assert res.returncode != 0
    assert "no signatures found" in res.stderr, res.stderr
    assert ostree("rev-parse", "--repo", client, "origin:unsigned/x86_64", check=False).returncode != 0
    assert unsigned not in ostree("refs", "--repo", client).stdout

    # A client that trusts another key refuses the signed commit as well.
    stranger = client_repo(tmp_path / "stranger", url, export_gpg(other_gpg_key, tmp_path / "other.gpg"))
    res = ostree("pull", "--repo", stranger, "origin", BRANCH, check=False)
    assert res.returncode != 0, res.stdout
    assert "public key not found" in res.stderr, res.stderr
    assert ostree("rev-parse", "--repo", stranger, f"origin:{BRANCH}", check=False).returncode != 0


# -- ed25519 ----------------------------------------------------------------------------------


def test_keygen_writes_ostree_sign_key_files(treeship, tmp_path):
    out = treeship("keygen", tmp_path / "release", "--json").json()
    secret, public = Path(out["secret"]), Path(out["public"])
    assert (secret, public) == (tmp_path / "release.secret", tmp_path / "release.pub")
    assert secret.stat().st_mode & 0o077 == 0
    raw = base64.b64decode(secret.read_text().strip(), validate=True)
    assert len(raw) == 64
    pub = base64.b64decode(public.read_text().strip(), validate=True)
    assert len(pub) == 32
    assert out["public_key"] == public.read_text().strip()
    # seed ‖ public: the public half is what the seed derives.
    assert Ed25519PrivateKey.from_private_bytes(raw[:32]).public_key().public_bytes_raw() == raw[32:] == pub
    # Never overwrite a key.
    res = treeship("keygen", tmp_path / "release", rc=2)
    assert "exists" in res.stderr
    assert base64.b64decode(secret.read_text().strip()) == raw


def test_ed25519_signature_independently_verified(treeship, sample_tree, repo, ed25519_key, other_ed25519_key):
    out = treeship("release", sample_tree, "--repo", repo, "-b", BRANCH, "--version", "1",
                   "--sign-ed25519", ed25519_key.secret, "--sign-ed25519", other_ed25519_key.secret, "--json").json()
    commit = out["commit"]
    assert out["signatures"] == [{"type": "ed25519", "key": ed25519_key.public_b64},
                                 {"type": "ed25519", "key": other_ed25519_key.public_b64}]
    data = object_path(repo, commit, "commit").read_bytes()
    assert hashlib.sha256(data).hexdigest() == commit

    entries = detached(repo, commit)
    assert set(entries) == {"ostree.sign.ed25519"}
    sigs = aay(entries["ostree.sign.ed25519"])
    assert [len(s) for s in sigs] == [64, 64]
    # ostree's own reading of the detached metadata agrees.
    text = ostree("show", "--repo", repo, commit, "--print-detached-metadata-key=ostree.sign.ed25519").stdout
    assert aay(GLib.Variant.parse(GLib.VariantType("aay"), text, None, None)) == sigs

    for key, sig in zip([ed25519_key, other_ed25519_key], sigs, strict=True):
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_b64))
        pub.verify(sig, data)  # raises InvalidSignature if wrong
        # Ed25519 is deterministic: the secret key file signs to exactly the stored bytes.
        seed = base64.b64decode(key.secret.read_text().strip())[:32]
        assert Ed25519PrivateKey.from_private_bytes(seed).sign(data) == sig
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(base64.b64decode(ed25519_key.public_b64)).verify(sigs[1], data)
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(base64.b64decode(ed25519_key.public_b64)).verify(sigs[0], data + b"\0")


def test_gpg_and_ed25519_together(treeship, sample_tree, repo, gpg_key, ed25519_key):
    commit = release(treeship, sample_tree, repo, *gpg_args(gpg_key), "--sign-ed25519", ed25519_key.secret)
    entries = detached(repo, commit)
    assert set(entries) == {"ostree.gpgsigs", "ostree.sign.ed25519"}
    (sig,) = aay(entries["ostree.sign.ed25519"])
    data = object_path(repo, commit, "commit").read_bytes()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(ed25519_key.public_b64)).verify(sig, data)
    assert "Good signature" in ostree("show", "--repo", repo, "--gpg-homedir", gpg_key.homedir, commit).stdout
    out = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir,
                   "--ed25519-pubkey", ed25519_key.public_b64, "--json").json()
    assert out["ok"] is True
    assert sorted((s["type"], s["status"]) for s in out["signatures"]) == [("ed25519", "good"), ("gpg", "good")]


# -- treeship verify --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_repo(tmp_path_factory: pytest.TempPathFactory, gpg_key, ed25519_key) -> tuple[Path, str]:
    """A release signed with both the GPG key and the ed25519 key: (repo, commit).

    Made once for the module: the tests that use it only read.
    """
    base = tmp_path_factory.mktemp("signed")
    repo = base / "releases"
    env = {k: v for k, v in os.environ.items() if k != "TREESHIP_REPO"}
    p = subprocess.run([*treeship_command(), "release", str(make_tree(base / "tree")), "--repo", str(repo),
                        "-b", BRANCH, "--version", "1", *map(str, gpg_args(gpg_key)),
                        "--sign-ed25519", str(ed25519_key.secret), "--json"],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert p.returncode == 0, p.stderr
    return repo, json.loads(p.stdout)["commit"]


def test_verify_gpg_homedir(treeship, signed_repo, gpg_key):
    repo, _ = signed_repo
    res = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir)
    assert gpg_key.fingerprint in res.stdout
    assert "Good gpg signature" in res.stdout
    assert "Release Signer" in res.stdout
    assert "Unverified ed25519 signature" in res.stdout  # reported, but neither good nor bad


def test_verify_gpg_keyring_file(treeship, signed_repo, gpg_key, tmp_path):
    repo, _ = signed_repo
    keyring = export_gpg(gpg_key, tmp_path / "trusted.gpg")
    out = treeship("verify", BRANCH, "--repo", repo, "--gpg-keyring", keyring, "--json").json()
    assert out["ok"] is True
    gpg = [s for s in out["signatures"] if s["type"] == "gpg"]
    assert [(s["status"], s["key"]) for s in gpg] == [("good", gpg_key.fingerprint)]


def test_verify_gpg_homedir_with_keybox(treeship, signed_repo, gpg_key, tmp_path):
    repo, _ = signed_repo
    # A modern GnuPG home (pubring.kbx, no *.gpg keyring) that only holds the public key.
    home = tmp_path / "kbx-home"
    home.mkdir(mode=0o700)
    keyfile = export_gpg(gpg_key, tmp_path / "pub.gpg")
    try:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(keyfile)],
                       check=True, capture_output=True)
        assert (home / "pubring.kbx").exists() and not (home / "pubring.gpg").exists()
        out = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", home, "--json").json()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
    assert out["ok"] is True
    assert [s["status"] for s in out["signatures"] if s["type"] == "gpg"] == ["good"]


def test_verify_ed25519_inline_and_file(treeship, signed_repo, ed25519_key, other_ed25519_key, tmp_path):
    repo, _ = signed_repo
    inline = treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public_b64)
    assert ed25519_key.public_b64 in inline.stdout
    treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public)
    # A file of several keys, with a comment: the right one among them is enough.
    keys = tmp_path / "trusted.pub"
    keys.write_text(f"# release keys\n{other_ed25519_key.public_b64}\n{ed25519_key.public_b64}\n")
    out = treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", keys, "--json").json()
    assert out["ok"] is True
    assert [(s["status"], s["key"]) for s in out["signatures"] if s["type"] == "ed25519"] == \
        [("good", ed25519_key.public_b64)]


def test_verify_json_shape(treeship, signed_repo, gpg_key, ed25519_key):
    repo, signed = signed_repo
    out = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir,
                   "--ed25519-pubkey", ed25519_key.public_b64, "--json").json()
    assert out["ref"] == BRANCH
    assert out["commit"] == signed
    assert out["ok"] is True
    assert isinstance(out["signatures"], list) and len(out["signatures"]) == 2
    for s in out["signatures"]:
        assert {"type", "status", "key"} <= set(s)
        assert s["status"] == "good"
    by_type = {s["type"]: s for s in out["signatures"]}
    assert by_type["gpg"]["key"] == gpg_key.fingerprint
    assert by_type["ed25519"]["key"] == ed25519_key.public_b64


def test_verify_untrusted_keys_only(treeship, signed_repo, other_gpg_key, other_ed25519_key):
    repo, _ = signed_repo
    res = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", other_gpg_key.homedir, "--json", rc=7)
    out = json.loads(res.stdout)
    assert out["ok"] is False
    assert [s["status"] for s in out["signatures"] if s["type"] == "gpg"] == ["unknown-key"]
    assert "no signature by a trusted key" in res.stderr

    res = treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", other_ed25519_key.public_b64, "--json",
                   rc=7)
    out = json.loads(res.stdout)
    assert out["ok"] is False
    assert all(s["status"] != "good" for s in out["signatures"])


def test_verify_unsigned(treeship, sample_tree, repo, gpg_key, ed25519_key):
    release(treeship, sample_tree, repo)
    res = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir,
                   "--ed25519-pubkey", ed25519_key.public_b64, rc=7)
    assert "no signatures" in res.stdout
    assert "trusted" in res.stderr
    out = json.loads(treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public_b64,
                              "--json", rc=7).stdout)
    assert out == {"ref": BRANCH, "commit": rev_parse(repo, BRANCH), "ok": False, "signatures": []}


def test_verify_ed25519_signature_from_another_commit(treeship, sample_tree, repo, ed25519_key):
    first = release(treeship, sample_tree, repo, "--sign-ed25519", ed25519_key.secret, version="1")
    second = release(treeship, sample_tree, repo, version="2")
    # Transplant the first commit's (genuine) signature onto the second commit.
    shutil.copyfile(object_path(repo, first, "commitmeta"), object_path(repo, second, "commitmeta"))
    assert aay(detached(repo, second)["ostree.sign.ed25519"]) == aay(detached(repo, first)["ostree.sign.ed25519"])

    res = treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public_b64, "--json", rc=7)
    out = json.loads(res.stdout)
    assert out["commit"] == second and out["ok"] is False
    assert len(out["signatures"]) == 1 and out["signatures"][0]["status"] != "good"
    # The original is still good.
    treeship("verify", first, "--repo", repo, "--ed25519-pubkey", ed25519_key.public_b64)


def test_verify_ed25519_flipped_bit(treeship, sample_tree, repo, ed25519_key):
    commit = release(treeship, sample_tree, repo, "--sign-ed25519", ed25519_key.secret)
    (sig,) = aay(detached(repo, commit)["ostree.sign.ed25519"])
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    write_detached(repo, commit, {"ostree.sign.ed25519": GLib.Variant("aay", [forged])})
    res = treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public_b64, "--json", rc=7)
    assert [s["status"] for s in json.loads(res.stdout)["signatures"]] != ["good"]


def test_verify_gpg_signature_from_another_commit_is_bad(treeship, sample_tree, repo, gpg_key):
    first = release(treeship, sample_tree, repo, *gpg_args(gpg_key), version="1")
    second = release(treeship, sample_tree, repo, version="2")
    shutil.copyfile(object_path(repo, first, "commitmeta"), object_path(repo, second, "commitmeta"))
    res = treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir, "--json", rc=7)
    out = json.loads(res.stdout)
    assert [s["status"] for s in out["signatures"]] == ["bad"]
    assert "bad signature" in res.stderr.lower()
    # ostree agrees that it is not good.
    shown = ostree("show", "--repo", repo, "--gpg-homedir", gpg_key.homedir, second, check=False)
    assert "Good signature" not in shown.stdout


def test_verify_needs_something_to_trust(treeship, signed_repo, gpg_key, tmp_path):
    repo, _ = signed_repo
    res = treeship("verify", BRANCH, "--repo", repo, rc=2)
    assert "--gpg-homedir" in res.stderr and "--ed25519-pubkey" in res.stderr
    assert res.stdout == ""
    keyring = export_gpg(gpg_key, tmp_path / "k.gpg")
    treeship("verify", BRANCH, "--repo", repo, "--gpg-homedir", gpg_key.homedir, "--gpg-keyring", keyring, rc=2)
