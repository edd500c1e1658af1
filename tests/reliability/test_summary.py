"""A receiver killed while it publishes the summary leaves a pair clients can use.

What libostree does (checked here under strace): ``regenerate_summary`` writes the new
summary to an unnamed file (O_TMPFILE), links it as ``tmp.XXXXXX`` and renames it over
``summary`` — never a torn summary — and only *then* deletes ``summary.sig``. Killed in
between, the new summary sits beside the old signatures, which no client accepts; and
while treeship signs afterwards, clients that verify find no signature at all.

What treeship does instead (Repo.publish_summary): regenerate and sign in a shadow of the
repository, move both files into a new generation directory, and switch
``treeship-summary/current`` (which ``summary`` and ``summary.sig`` link through) in one
rename. The proof: the publication runs under ``strace``, killed (SIGKILL) on entering
each of its file-system calls in turn — every step — and after each kill ``ostree``
itself, as a client with ``gpg-verify-summary=true``, reads the summary over file://,
checks its GPG signature, and lists either the old refs or the new ones; the ed25519
signature is checked with ``cryptography``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushkit import aay, export_gpg, gvariant_dict, ostree, treeship_command

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")
CALLS = "rename,renameat,linkat,unlinkat,symlink,mkdir"
_LINE = re.compile(r"^(\w+)\((.*)$")  # strace -p PID (no -f): one thread, no pid prefix

PUBLISH = textwrap.dedent("""\
    import shutil, sys, tempfile
    from pathlib import Path
    from treeship import signing
    from treeship.repo import Repo

    repo_path, gpg_fpr, gpg_home, ed_secret = sys.argv[1:5]
    repo = Repo.open(repo_path)
    key = signing.load_ed25519_secret(ed_secret)

    def sign(shadow):
        shadow.sign_summary_gpg([gpg_fpr], gpg_home)
        shadow.add_summary_signatures(signing.ED25519_KEY, [key.signing_key.sign(shadow.summary_bytes()).signature])

    print("ready", flush=True)  # loaded: strace attaches now, and counts calls from here
    sys.stdin.readline()
    work = Path(tempfile.mkdtemp(prefix="treeship-receive-", dir=Path(repo_path, "tmp")))
    if len(sys.argv) > 5:  # libostree's own way, in place: what publish_summary avoids
        repo.regenerate_summary()
        sign(repo)
    else:
        repo.publish_summary(work, sign)
    shutil.rmtree(work)  # as the receiver's session directory goes
""")


def _many_refs(repo: Path, commit: str, prefix: str, n: int) -> dict[str, str]:
    heads = repo / "refs" / "heads" / prefix
    heads.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (heads / f"b{i:04}").write_text(f"{commit}\n")
    return {f"{prefix}/b{i:04}": commit for i in range(n)}


@pytest.fixture
def signed_repo(tmp_path: Path, gpg_key, ed25519_key):
    """A server repository with 300 refs and a summary signed with GPG and ed25519."""
    repo = tmp_path / "srv"
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hello\n")
    subprocess.run([*treeship_command(), "release", str(tree), "--repo", str(repo), "--branch", "base/x"],
                   check=True, capture_output=True)
    commit = ostree("rev-parse", "--repo", repo, "base/x").stdout.strip()
    old = {"base/x": commit, **_many_refs(repo, commit, "old", 300)}
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH)
    args = [sys.executable, str(script), str(repo), gpg_key.fingerprint, str(gpg_key.homedir), str(ed25519_key.secret)]
    assert _publish(args) == 0
    new = {**old, **_many_refs(repo, commit, "new", 50)}  # refs moved; the summary still lists `old`
    return repo, args, old, new


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _publish(args: list[str], *strace_args: str) -> int:
    """Run the publication script; with ``strace_args``, under strace attached once it has loaded
    (python and libostree load untraced: fast). Its exit status (negative: killed by that signal)."""
    helper = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env())
    tracer = None
    try:
        assert helper.stdout.readline() == b"ready\n"
        if strace_args:
            tracer = subprocess.Popen([STRACE, *strace_args, "-p", str(helper.pid)], stderr=subprocess.PIPE)
            line = tracer.stderr.readline()  # "strace: Process N attached": from now on it sees every call
            assert b"attached" in line, line
        helper.stdin.write(b"go\n")
        helper.stdin.close()
        rc = helper.wait(timeout=120)
        assert rc in (0, -9), helper.stderr.read().decode()
        return rc
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        if tracer is not None:
            tracer.wait(timeout=60)
            tracer.stderr.close()
        helper.stdout.close()
        helper.stderr.close()


def _client(tmp: Path, repo: Path, gpg_key) -> Path:
    """An ``ostree`` client of ``repo`` over file:// that requires a good GPG summary signature."""
    client = tmp / f"client-{repo.name}"
    if not client.exists():
        ostree("init", "--repo", client, "--mode=archive")
        pub = export_gpg(gpg_key, tmp / "pub.gpg")
        ostree("remote", "add", "--repo", client, f"--gpg-import={pub}", "--set=gpg-verify-summary=true",
               "origin", f"file://{repo}")
    shutil.rmtree(client / "tmp" / "cache", ignore_errors=True)  # no cached summary: fetch and verify
    return client


def _client_refs(tmp: Path, repo: Path, gpg_key) -> tuple[bool, set[str], str]:
    """What `ostree remote refs` gets: (verified, ref names, error)."""
    p = ostree("remote", "refs", "--repo", _client(tmp, repo, gpg_key), "origin", check=False)
    return p.returncode == 0, {line.split(":", 1)[1] for line in p.stdout.split()}, p.stderr.strip()


def _ed25519_ok(repo: Path, ed25519_key) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig_file = repo / "summary.sig"
    if not sig_file.exists():
        return False
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(ed25519_key.public_b64))
    summary = (repo / "summary").read_bytes()
    for sig in aay(gvariant_dict(sig_file.read_bytes())["ostree.sign.ed25519"]):
        try:
            public.verify(sig, summary)
            return True
        except InvalidSignature:
            continue
    return False


def _main_thread_calls(trace: str) -> list[tuple[str, str]]:
    """(syscall, arguments) in order, as `strace -p PID` (the main thread only) wrote them."""
    return [(m.group(1), m.group(2)) for m in map(_LINE.match, trace.splitlines()) if m]


def test_libostree_replaces_the_summary_by_rename_then_deletes_the_signature(signed_repo, tmp_path):
    """The facts the design rests on, read from a trace of libostree's own regeneration."""
    repo, args, _, _ = signed_repo
    trace = tmp_path / "trace"
    assert _publish([*args, "in-place"], "-o", str(trace), "-e", "trace=openat,rename,renameat,linkat,unlinkat") == 0
    calls = _main_thread_calls(trace.read_text())
    writes = [args for name, args in calls if name == "openat" and '"summary"' in args
              and re.search(r"O_WRONLY|O_RDWR|O_TRUNC", args)]
    assert writes == [], f"libostree opened the summary for writing: {writes}"
    summary_renamed = next(i for i, (name, args) in enumerate(calls) if name == "renameat" and '"summary")' in args)
    sig_unlinked = next(i for i, (name, args) in enumerate(calls) if name == "unlinkat" and '"summary.sig"' in args)
    assert sig_unlinked > summary_renamed  # the window treeship's publication closes


def test_in_place_regeneration_killed_between_rename_and_unlink_leaves_a_bad_pair(signed_repo, tmp_path, gpg_key,
                                                                                   ed25519_key, figures):
    """Why publish_summary exists: libostree in place, killed at its unlink of summary.sig."""
    repo, args, old, _ = signed_repo
    ok, _, _ = _client_refs(tmp_path, repo, gpg_key)
    assert ok and _ed25519_ok(repo, ed25519_key)
    trace = tmp_path / "dry"
    shutil.copytree(repo, tmp_path / "dry-repo", symlinks=True)
    assert _publish([*args[:2], str(tmp_path / "dry-repo"), *args[3:], "in-place"],
                    "-o", str(trace), "-e", "trace=unlinkat") == 0
    unlinks = [a for _, a in _main_thread_calls(trace.read_text())]
    n = 1 + next(i for i, a in enumerate(unlinks) if '"summary.sig"' in a)
    assert _publish([*args, "in-place"], "-o", "/dev/null", "-e", "trace=unlinkat",
                    "-e", f"inject=unlinkat:signal=SIGKILL:when={n}") == -9
    ok, _, err = _client_refs(tmp_path, repo, gpg_key)
    assert not ok and "BAD signature" in err, err
    assert not _ed25519_ok(repo, ed25519_key)
    figures.append({"kind": "summary-in-place (libostree alone)", "killed_at": f"unlinkat #{n} (summary.sig)",
                    "client_accepts": ok})


def test_summary_publication_killed_at_every_step(signed_repo, tmp_path, gpg_key, ed25519_key, figures):
    repo, args, old, new = signed_repo
    template = tmp_path / "template"
    shutil.copytree(repo, template, symlinks=True)
    dry = tmp_path / "dry"
    shutil.copytree(template, dry, symlinks=True)
    trace = tmp_path / "trace"
    assert _publish([args[0], args[1], str(dry), *args[3:]], "-o", str(trace), "-e", f"trace={CALLS}") == 0
    calls = _main_thread_calls(trace.read_text())
    assert any(name == "rename" and "treeship-summary/current" in a for name, a in calls), calls
    points = []
    seen: dict[str, int] = {}
    for name, call in calls:
        seen[name] = seen.get(name, 0) + 1
        points.append((name, seen[name], call))
    outcomes = {"old": 0, "new": 0}
    srv = tmp_path / "point"
    for i, (name, nth, call) in enumerate(points):
        shutil.rmtree(srv, ignore_errors=True)
        shutil.copytree(template, srv, symlinks=True)
        rc = _publish([args[0], args[1], str(srv), *args[3:]], "-o", "/dev/null", "-e", f"trace={name}",
                      "-e", f"inject={name}:signal=SIGKILL:when={nth}")
        assert rc == -9, (name, nth, call)
        view = ostree("summary", "--view", "--repo", srv, check=False)
        assert view.returncode == 0, (name, nth, call, view.stderr)  # never torn
        ok, listed, err = _client_refs(tmp_path, srv, gpg_key)
        assert ok, (name, nth, call, err)  # the GPG signature verifies the summary beside it
        assert _ed25519_ok(srv, ed25519_key), (name, nth, call)
        state = "old" if set(listed) == set(old) else "new" if set(listed) == set(new) else None
        assert state, (name, nth, call, sorted(set(listed) ^ set(new))[:5])
        outcomes[state] += 1
        if i % 4 == 0 or i == len(points) - 1:  # and the next publication completes it
            assert _publish([args[0], args[1], str(srv), *args[3:]]) == 0
            ok, listed, err = _client_refs(tmp_path, srv, gpg_key)
            assert ok and listed == set(new), err
    assert outcomes["old"] and outcomes["new"], outcomes
    figures.append({"kind": "summary-publication", "kill_points": len(points), "old_pair": outcomes["old"],
                    "new_pair": outcomes["new"], "torn_or_mismatched": 0, "refs": len(new)})
