"""A repository worked on through its files (treeship/filerepo.py: a plain push's receiver,
without libostree) is judged, read and written as libostree judges, reads and writes it.

The oracle is libostree itself through PyGObject: GLib's normal form and
``OSTree.validate_structureof_*`` for received metadata, ``Repo`` for commits, refs, partial
marks and the summary, and the ``ostree`` CLI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gi.require_version("OSTree", "1.0")
from gi.repository import GLib, OSTree  # noqa: E402

from conftest import ostree  # noqa: E402
from treeship import filerepo  # noqa: E402
from treeship.errors import StorageError, TransferError  # noqa: E402
from treeship.filerepo import FileRepo  # noqa: E402
from treeship.repo import Repo  # noqa: E402

DIRTREE, DIRMETA, COMMIT = 2, 3, 4
TYPES = {DIRTREE: ("(a(say)a(sayay))", OSTree.validate_structureof_dirtree, "dirtree"),
         DIRMETA: ("(uuua(ayay))", OSTree.validate_structureof_dirmeta, "dirmeta"),
         COMMIT: ("(a{sv}aya(say)sstayay)", OSTree.validate_structureof_commit, "commit")}
CS = bytes(range(32))


def libostree_accepts(data: bytes, objtype: int) -> bool:
    vtype, validate, _ = TYPES[objtype]
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(vtype), GLib.Bytes.new(data), False)
    if not v.is_normal_form():
        return False
    try:
        validate(v)
    except GLib.Error:
        return False
    return True


def we_accept(data: bytes, objtype: int) -> bool:
    try:
        filerepo.validate_metadata(data, hashlib.sha256(data).hexdigest(), objtype)
    except TransferError:
        return False
    return True


def agree(data: bytes, objtype: int) -> bool:
    ours, theirs = we_accept(data, objtype), libostree_accepts(data, objtype)
    assert ours == theirs, (TYPES[objtype][2], data.hex(), ours, theirs)
    return ours


def _bytes(v: GLib.Variant) -> bytes:
    return bytes(v.get_data_as_bytes().get_data() or b"")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[bytes]], list[str]]:
    """A repository of three commits by `ostree commit`: names of every kind, a directory big
    enough for 2-byte framing offsets, setuid bits, symlinks, a version and a ref binding."""
    base = tmp_path_factory.mktemp("real")
    tree = base / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(300))
    (tree / "usr" / "bin" / "tool").chmod(0o4755)
    (tree / "é€𝄞 dir").mkdir()
    (tree / "é€𝄞 dir" / "-").write_bytes(b"x")
    (tree / "many").mkdir()
    for i in range(300):
        (tree / "many" / f"file-{i:04d}").write_bytes(bytes([i % 256]))
    (tree / "link").symlink_to("usr/bin/tool")
    (tree / "sticky").mkdir(mode=0o1777)
    (tree / "sticky").chmod(0o1777)
    repo = base / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    commits = []
    for i in range(3):
        (tree / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes([i]) * 300)
        commits.append(ostree("commit", f"--repo={repo}", "--branch=main", "--add-metadata-string=version=1." + str(i),
                              "--add-metadata=ostree.ref-binding=['main']", str(tree)).stdout.strip())
    found: dict[int, list[bytes]] = {t: [] for t in TYPES}
    for t, (_, _, suffix) in TYPES.items():
        found[t] = [p.read_bytes() for p in sorted(repo.glob(f"objects/*/*.{suffix}"))]
    assert len(found[COMMIT]) == 3 and any(len(d) > 255 for d in found[DIRTREE])
    return repo, found, commits


# -- received metadata: judged as libostree judges it -------------------------------------------


def test_every_metadata_object_ostree_wrote_is_accepted(real):
    _, found, _ = real
    for objtype, datas in found.items():
        for data in datas:
            assert agree(data, objtype)


@pytest.mark.parametrize("files, dirs", [
    ([("", CS)], []),  # libostree 2022.7 takes an empty name
    ([(".", CS)], []), ([("..", CS)], []), ([], [(".", CS, CS)]), ([], [("..", CS, CS)]),
    ([("a/b", CS)], []), ([], [("/", CS, CS)]), ([("...", CS)], []), ([(".hidden", CS)], []),
    ([("a", CS), ("a", CS)], []), ([("b", CS), ("a", CS)], []),  # duplicates, order: not libostree's concern
    ([("a", CS[:31])], []), ([("a", CS + b"x")], []), ([("a", b"")], []),
    ([], [("d", CS[:31], CS)]), ([], [("d", CS, CS[:1])]), ([], [("d", CS, b"")]),
    ([("\x01ctrl", CS)], []), ([("é€𝄞", CS)], [("é", CS, CS)]),
])
def test_crafted_dirtrees(files, dirs):
    agree(_bytes(GLib.Variant("(a(say)a(sayay))", (files, dirs))), DIRTREE)


@pytest.mark.parametrize("mode", [0o040755, 0o040000, 0o047777, 0o041777, 0o100644, 0o120777, 0o060644, 0,
                                  0o040755 | 0o200000, 0o140755, 0xFFFFFFFF, 0o170755])
def test_crafted_dirmetas(mode):
    raw = int.from_bytes(mode.to_bytes(4, "big"), "little")  # stored big-endian, as libostree does
    agree(_bytes(GLib.Variant("(uuua(ayay))", (0, 0, raw, [(b"user.x\0", b"v")]))), DIRMETA)


@pytest.mark.parametrize("parent, root, meta", [
    (b"", CS, CS), (CS, CS, CS), (CS[:31], CS, CS), (CS + b"x", CS, CS), (b"x", CS, CS),
    (b"", b"", CS), (b"", CS, b""), (b"", CS[:16], CS), (b"", CS, CS + CS),
])
def test_crafted_commits(parent, root, meta):
    v = GLib.Variant("(a{sv}aya(say)sstayay)", ({"version": GLib.Variant("s", "1")}, parent,
                                                 [("x", b"\x01")], "subject", "body", 1, root, meta))
    agree(_bytes(v), COMMIT)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_altered_metadata_is_judged_as_libostree_judges_it(real, data):
    """A byte changed, bytes cut, added or inserted anywhere in a real dirtree, dirmeta or commit."""
    _, found, _ = real
    objtype = data.draw(st.sampled_from(sorted(found)))
    blob = bytearray(data.draw(st.sampled_from(found[objtype])))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["byte", "cut", "extend", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if how == "byte" and blob:
            blob[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del blob[at:]
        elif how == "extend":
            blob += data.draw(st.binary(min_size=1, max_size=8))
        elif how == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif blob:
            del blob[at:at + data.draw(st.integers(1, 4))]
    agree(bytes(blob), objtype)


_names = st.one_of(st.sampled_from(["", ".", "..", "/", "a/b", "a", "..."]), st.text(max_size=6))
_sums = st.sampled_from([CS, CS[:31], CS + b"\0", b""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, _sums), max_size=4), st.lists(st.tuples(_names, _sums, _sums), max_size=4))
def test_generated_dirtrees(files, dirs):
    files = [(n.replace("\0", ""), c) for n, c in files]  # a GVariant string holds no NUL
    dirs = [(n.replace("\0", ""), t, m) for n, t, m in dirs]
    agree(_bytes(GLib.Variant("(a(say)a(sayay))", (files, dirs))), DIRTREE)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_generated_dirmeta_modes(mode):
    agree(_bytes(GLib.Variant("(uuua(ayay))", (0, 0, int.from_bytes(mode.to_bytes(4, "big"), "little"), []))),
          DIRMETA)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(sorted(TYPES)))
def test_random_bytes(blob, objtype):
    agree(blob, objtype)


def test_signatures_and_unknown_types(real):
    """A .commitmeta is any a{sv} in normal form (its signatures are checked where they are
    used); a type that is no object is refused, not a crash."""
    good = _bytes(GLib.Variant("a{sv}", {"ostree.gpgsigs": GLib.Variant("aay", [b"sig"])}))
    filerepo.verify_object(good, hashlib.sha256(good).hexdigest(), 6)
    bad = good[:-1]
    with pytest.raises(TransferError, match="not in normal form"):
        filerepo.verify_object(bad, hashlib.sha256(bad).hexdigest(), 6)
    with pytest.raises(TransferError, match="unknown object type"):
        filerepo.verify_object(good, hashlib.sha256(good).hexdigest(), 5)


def test_variants_refuse_what_glib_would_abort_on():
    """GLib aborts the process on n_children of a string or get_variant of a non-variant: the
    wrapper raises instead."""
    from treeship import gvariant

    v = gvariant.normal("s", b"abc\0")
    assert v is not None and v.string() == "abc"
    for ask in (len, lambda x: x.child(0), lambda x: x.unboxed(), lambda x: x.lookup("k")):
        with pytest.raises(TypeError):
            ask(v)


def test_a_wrong_checksum_is_refused(real):
    _, found, _ = real
    data = found[DIRTREE][0]
    with pytest.raises(TransferError, match="checksum mismatch"):
        filerepo.verify_object(data, "0" * 64, DIRTREE)
    filerepo.verify_object(data, hashlib.sha256(data).hexdigest(), DIRTREE)


# -- commits, refs, partial marks: read and written as libostree does --------------------------


def _files(path: Path) -> FileRepo:
    r = FileRepo.open(path, lambda: pytest.fail("FileRepo asked libostree"))
    assert r is not None
    return r


def test_commits_read_as_libostree_reads_them(real):
    repo, _, commits = real
    lib, files = Repo.open(repo), _files(repo)
    for c in commits:
        assert files.commit_links(c) == lib.commit_links(c)
        assert files.ref_binding(c) == lib.ref_binding(c) == ["main"]
        assert files.has_commit(c) and files.complete_commit(c)
    for a in commits:
        for b in commits:
            assert files.is_ancestor(a, b) == lib.is_ancestor(a, b)
    assert files.is_ancestor(commits[0], commits[2]) and not files.is_ancestor(commits[2], commits[0])
    assert not files.is_ancestor("0" * 64, commits[2])
    assert files.head("main") == lib.head("main") == commits[2]
    assert files.head("nothing/here") is lib.head("nothing/here") is None
    assert files.refs() == lib.refs()


@pytest.mark.parametrize("binding", [None, GLib.Variant("as", []), GLib.Variant("as", ["a", "b/c"]),
                                     GLib.Variant("s", "main"), GLib.Variant("av", [GLib.Variant("s", "main")]),
                                     GLib.Variant("ay", b"main")])
def test_ref_bindings_of_every_type(tmp_path, binding):
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    meta = {} if binding is None else {"ostree.ref-binding": binding}
    data = _bytes(GLib.Variant("(a{sv}aya(say)sstayay)", (meta, b"", [], "s", "", 0, CS, CS)))
    csum = hashlib.sha256(data).hexdigest()
    (repo / "objects" / csum[:2]).mkdir()
    (repo / "objects" / csum[:2] / f"{csum[2:]}.commit").write_bytes(data)
    answers = []
    for r in (Repo.open(repo), _files(repo)):
        try:
            answers.append(r.ref_binding(csum))
        except ValueError:
            answers.append("malformed")
    assert answers[0] == answers[1]
    assert answers[0] == ("malformed" if binding is not None and binding.get_type_string() != "as" else
                          None if binding is None else binding.unpack())


def test_partial_marks_are_libostree_s(real, tmp_path):
    repo = tmp_path / "copy"
    ostree("init", f"--repo={repo}", "--mode=archive")
    src, _, commits = real
    ostree("pull-local", "--depth=-1", f"--repo={repo}", str(src), "main")
    files = _files(repo)
    files.mark_partial(commits[2], True)
    assert not Repo.open(repo).has_object(commits[2], int(OSTree.ObjectType.COMMIT))  # libostree reads the mark
    assert not files.complete_commit(commits[2])
    files.mark_partial(commits[2], True)  # twice: still one mark
    files.mark_partial(commits[2], False)
    assert Repo.open(repo).has_object(commits[2], int(OSTree.ObjectType.COMMIT))
    files.mark_partial(commits[2], False)  # not marked: nothing to do
    ostree("fsck", f"--repo={repo}")


def test_an_unusual_ref_file_is_read_by_libostree(real, tmp_path):
    repo = tmp_path / "copy"
    ostree("init", f"--repo={repo}", "--mode=archive")
    src, _, commits = real
    ostree("pull-local", "--depth=-1", f"--repo={repo}", str(src), "main")
    (repo / "refs" / "heads" / "main").write_text(f"{commits[1]}\n\n")
    asked = []

    def fallback() -> Repo:
        asked.append(True)
        return Repo.open(repo)

    r = FileRepo.open(repo, fallback)
    assert r is not None
    assert r.head("main") == Repo.open(repo).head("main")
    assert asked


@pytest.mark.parametrize("config, plain", [
    ("[core]\nrepo_version=1\nmode=archive-z2\n", True),
    ("[core]\nrepo_version=1\nmode=archive\nfsync=false\n", True),
    ("[core]\nrepo_version=1\nmode=bare-user\n", False),
    ("[core]\nrepo_version=1\nmode=archive\nfsync=0\n", False),  # GLib reads it; this module does not try
    ("[core]\nrepo_version=1\nmode = archive\n", False),
    ("[core]\nrepo_version=1\nmode=archive\nparent=/elsewhere\n", False),
    ("[core]\nrepo_version=2\nmode=archive\n", False),  # libostree refuses to open it: it says why
    ("[core]\nrepo_version=1\nmode=bare-user\nx=y\x1cmode=archive\n", False),  # GLib's lines end at \n alone
    ("[core]\r\nrepo_version=1\r\nmode=archive\r\n", False),
])
def test_only_a_plain_repository_is_worked_on_through_its_files(tmp_path, config, plain):
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    (repo / "config").write_text(config)
    r = FileRepo.open(repo, lambda: pytest.fail("asked libostree"))
    assert (r is not None) == plain
    if r is not None:
        assert r.fsync == ("fsync=false" not in config)


def test_remote_refs_need_libostree(real, tmp_path):
    repo = tmp_path / "copy"
    ostree("init", f"--repo={repo}", "--mode=archive")
    (repo / "refs" / "remotes" / "origin").mkdir(parents=True)
    (repo / "refs" / "remotes" / "origin" / "main").write_text(real[2][0] + "\n")
    assert FileRepo.open(repo, lambda: pytest.fail("asked libostree")) is None


# -- the summary ---------------------------------------------------------------------------------


def _summary(path: Path) -> tuple[list, dict]:
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(filerepo.SUMMARY_TYPE),
                                    GLib.Bytes.new((path / "summary").read_bytes()), False)
    refs, extra = v.unpack()
    extra.pop("ostree.summary.last-modified")
    return refs, extra


def _twins(tmp_path: Path, src: Path, commits: list[str], config_tail: str = "") -> tuple[Path, Path]:
    twins = []
    for name in ("ostree", "ours"):
        repo = tmp_path / name
        ostree("init", f"--repo={repo}", "--mode=archive")
        if config_tail:
            with open(repo / "config", "a") as f:
                f.write(config_tail)
        ostree("pull-local", "--depth=-1", f"--repo={repo}", str(src), "main")
        ostree("refs", f"--repo={repo}", "--create=other/x86_64", commits[0])
        ostree("refs", f"--repo={repo}", f"--create={'n' * 200}/{'m' * 200}/long", commits[1])  # 2-byte framing offsets
        twins.append(repo)
    return twins[0], twins[1]


def _summarize_both(theirs: Path, ours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`ostree summary -u` in ``theirs``; the clock set to the time it wrote; a shadow of
    ``ours`` (as generations.publish makes one) for write_summary."""
    ostree("summary", "-u", f"--repo={theirs}")
    clock = GLib.Variant.new_from_bytes(GLib.VariantType.new(filerepo.SUMMARY_TYPE),
                                        GLib.Bytes.new((theirs / "summary").read_bytes()), False
                                        ).unpack()[1]["ostree.summary.last-modified"]
    monkeypatch.setattr("time.time", lambda: float(int.from_bytes(clock.to_bytes(8, "little"), "big")))
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for entry in ours.iterdir():
        (shadow / entry.name).symlink_to(entry)
    return shadow


@pytest.mark.parametrize("config_tail", ["", '\n[remote "origin"]\nurl=http://example.org/\ngpg-verify=false\n',
                                         'fsync=true\n\n[remote "a"]\nurl=http://example.org/\n'])
def test_the_summary_written_here_is_libostree_s_byte_for_byte(real, tmp_path, monkeypatch, config_tail):
    """write_summary (a plain push's receiver) against `ostree summary -u` on a twin repository:
    the same summary and the same config (libostree adds core.indexed-deltas), given the same
    clock."""
    src, _, commits = real
    theirs, ours = _twins(tmp_path, src, commits, config_tail)
    shadow = _summarize_both(theirs, ours, tmp_path, monkeypatch)
    listed = filerepo.write_summary(ours, shadow)
    assert listed == {"main": commits[2], "other/x86_64": commits[0], f"{'n' * 200}/{'m' * 200}/long": commits[1]}
    assert (shadow / "summary").read_bytes() == (theirs / "summary").read_bytes()
    assert not (shadow / "config").is_symlink() and (ours / "config").read_text() != (theirs / "config").read_text()
    assert (shadow / "config").read_text() == (theirs / "config").read_text()
    # once the config says so, it is left as it is
    os.replace(shadow / "config", ours / "config")
    (shadow / "config").symlink_to(ours / "config")
    filerepo.write_summary(ours, shadow)
    assert (shadow / "config").is_symlink()


def test_what_only_libostree_should_summarize_is_left_to_it(real, tmp_path):
    src, _, commits = real
    _, repo = _twins(tmp_path, src, commits)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    ostree("static-delta", "generate", f"--repo={repo}", "--from", commits[1], "--to", commits[2])
    assert filerepo.write_summary(repo, shadow) is None and not (shadow / "summary").exists()
    for i, tail in enumerate(("collection-id=org.example.Os\n", "tombstone-commits=false\n",
                              "# GLib puts a key among comments by rules of its own\n",
                              '\n\n[remote "a"]\nurl=http://example.org/\n',  # libostree redoes blank lines
                              '\n[remote "a"]\nurl=http://example.org/\n[remote "b"]\nurl=http://b/\n',
                              '\n[remote "a"]\n# a comment libostree drops\nurl=http://example.org/\n')):
        (tmp_path / str(i)).mkdir()
        _, repo = _twins(tmp_path / str(i), src, commits, tail)
        assert filerepo.write_summary(repo, shadow) is None
    (tmp_path / "top").mkdir()
    _, repo = _twins(tmp_path / "top", src, commits)
    (repo / "config").write_text("# a comment before [core]\n" + (repo / "config").read_text())
    assert filerepo.write_summary(repo, shadow) is None
    # a name libostree does not take for a ref (an editor's backup): it leaves it out of the summary
    (tmp_path / "backup").mkdir()
    _, repo = _twins(tmp_path / "backup", src, commits)
    shutil.copy(repo / "refs" / "heads" / "main", repo / "refs" / "heads" / "main.bak~")
    assert filerepo.write_summary(repo, shadow) is None


def test_the_mode_is_published_as_the_config_spells_it(real, tmp_path, monkeypatch):
    src, _, commits = real
    theirs, ours = _twins(tmp_path, src, commits)
    for repo in (theirs, ours):
        (repo / "config").write_text((repo / "config").read_text().replace("mode=archive-z2", "mode=archive"))
    shadow = _summarize_both(theirs, ours, tmp_path, monkeypatch)
    assert filerepo.write_summary(ours, shadow) is not None
    assert (shadow / "summary").read_bytes() == (theirs / "summary").read_bytes()


def test_the_summary_waits_for_libostree_s_repository_lock(real, tmp_path):
    """An `ostree` command holding the repository's lock (a record lock on .lock) is waited for."""
    src, _, commits = real
    _, repo = _twins(tmp_path, src, commits)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(repo / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageError, match="locked"), filerepo._repository_lock(repo, timeout=0.2):
            pass
    finally:
        holder.stdin.close()
        holder.wait()
    with filerepo._repository_lock(repo, timeout=5):
        pass


@pytest.mark.parametrize("delta", [False, True])
def test_the_published_summary_is_libostree_s(real, tmp_path, delta):
    """FileRepo and Repo publish the same summary, the time it was made aside (with a static
    delta, FileRepo leaves it to `ostree summary -u`); the generation lists the refs."""
    src, _, commits = real
    made = {}
    for how in ("libostree", "files"):
        repo = tmp_path / how
        ostree("init", f"--repo={repo}", "--mode=archive")
        ostree("pull-local", "--depth=-1", f"--repo={repo}", str(src), "main")
        ostree("refs", f"--repo={repo}", "--create=other/x86_64", commits[0])
        if delta:
            ostree("static-delta", "generate", f"--repo={repo}", "--from", commits[1], "--to", commits[2])
        work = tmp_path / f"work-{how}"
        work.mkdir()
        r = Repo.open(repo) if how == "libostree" else _files(repo)
        r.publish_summary(work)
        refs, extra = _summary(repo)
        if delta:  # a delta's superblock holds the time it was made: its checksum differs by the second
            listed = extra.pop("ostree.static-deltas")
            assert sorted(bytes(c) for c in listed.values()) == sorted(
                hashlib.sha256(p.read_bytes()).digest() for p in repo.glob("deltas/**/superblock"))
            extra["ostree.static-deltas"] = sorted(listed)
        made[how] = ((refs, extra), (repo / "config").read_text())
        assert r.summary_refs() == {"main": commits[2], "other/x86_64": commits[0]}
        assert "main" in ostree("summary", f"--repo={repo}", "--view").stdout
        assert os.readlink(repo / "summary") == "treeship-summary/current/summary"
    assert made["libostree"] == made["files"]
    assert ("ostree.static-deltas" in made["files"][0][1]) == delta


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.integers(0, 2**64 - 1), st.binary(max_size=40),
                          st.booleans(), st.integers(0, 2**64 - 1)), max_size=8),
       st.dictionaries(st.text(max_size=20), st.one_of(st.booleans(), st.integers(0, 2**64 - 1), st.text(max_size=9)),
                       max_size=5))
def test_serialize_writes_what_glib_writes(refs, extra):
    """gvariant.serialize against GLib's own serializer, for the summary's type, with names long
    enough for 2-byte framing offsets."""
    from treeship import gvariant

    def typed(value: object) -> tuple[str, object]:
        return ("b" if isinstance(value, bool) else "t" if isinstance(value, int) else "s", value)

    refs = [(n.replace("\0", ""), (size, csum, {"ostree.commit.version": ("s", n[:3].replace("\0", ""))} if v else {},
                                   ts)) for n, size, csum, v, ts in refs]
    refs = [(n, (size, csum, {**meta, "ostree.commit.timestamp": ("t", ts)})) for n, (size, csum, meta, ts) in refs]
    extra = {k.replace("\0", ""): typed(v.replace("\0", "") if isinstance(v, str) else v) for k, v in extra.items()}
    glib = GLib.Variant(filerepo.SUMMARY_TYPE, (
        [(n, (size, csum, {k: GLib.Variant(*x) for k, x in meta.items()})) for n, (size, csum, meta) in refs],
        {k: GLib.Variant(*x) for k, x in extra.items()}))
    assert gvariant.serialize(filerepo.SUMMARY_TYPE, (refs, extra)) == _bytes(glib)


def test_a_replaced_file_never_looks_older_than_the_one_it_replaces(tmp_path):
    """HTTP caches compare mtimes: a ref or summary replaced within the second (or by one
    whose clock reads earlier) must still look newer; with nothing to replace, nothing moves."""
    dest = tmp_path / "refs" / "heads" / "main"
    dest.parent.mkdir(parents=True)
    dest.write_text("old\n")
    future = os.stat(dest).st_mtime_ns + 3_600 * 10**9  # an old file an hour "ahead"
    os.utime(dest, ns=(future, future))
    filerepo.replace_file(dest, b"new\n", tmp_path)
    assert dest.read_bytes() == b"new\n" and os.stat(dest).st_mtime_ns > future
    fresh = tmp_path / "fresh"
    filerepo.replace_file(fresh, b"x", tmp_path)
    assert abs(os.stat(fresh).st_mtime_ns - os.stat(tmp_path).st_mtime_ns) < 60 * 10**9  # not pushed ahead
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "refs"]  # no temp file left


def _ref_setup(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    ostree("init", "--repo", repo, "--mode=archive")
    heads = repo / "refs" / "heads"
    filerepo.set_refs(repo, {"a": "1" * 64, "gone": "2" * 64})
    (heads / "b").mkdir()
    (heads / "b" / "c").write_text("3" * 64 + "\n")  # "b" cannot become a ref: a rename over it fails
    return repo, heads


def test_refs_of_one_call_move_all_or_none_when_a_rename_fails(tmp_path):
    """A push moves its refs together: should one of them fail, the refs moved before it
    are put back, new ones removed and deleted ones restored (found by a reviewer, who made
    the second rename fail with EIO)."""
    repo, heads = _ref_setup(tmp_path)
    with pytest.raises(StorageError, match="writing ref b"):
        filerepo.set_refs(repo, {"a": "4" * 64, "new/one": "5" * 64, "gone": None, "b": "6" * 64})
    assert (heads / "a").read_text() == "1" * 64 + "\n"
    assert (heads / "gone").read_text() == "2" * 64 + "\n"
    assert not (heads / "new").exists()
    assert (heads / "b" / "c").read_text() == "3" * 64 + "\n"
    assert [p.name for p in (repo / "tmp").iterdir() if p.name.startswith(".new-")] == []  # nothing left aside


def test_a_failed_call_leaves_no_directory_behind(tmp_path):
    """A ref not reached (after the failing one) made no refs/heads/q/, which would keep a
    branch ``q`` from ever being made (a reviewer's finding in the first version)."""
    repo, heads = _ref_setup(tmp_path)
    with pytest.raises(StorageError, match="writing ref b"):
        filerepo.set_refs(repo, {"b": "6" * 64, "q/r": "5" * 64})
    assert not (heads / "q").exists()
    assert filerepo.ref_conflict(repo, "q") is None


def test_refs_of_one_call_all_move(tmp_path):
    repo, heads = _ref_setup(tmp_path)
    filerepo.set_refs(repo, {"a": "4" * 64, "new/one": "5" * 64, "gone": None})
    assert (heads / "a").read_text() == "4" * 64 + "\n"
    assert (heads / "new" / "one").read_text() == "5" * 64 + "\n"
    assert not (heads / "gone").exists()
    assert [p.name for p in (repo / "tmp").iterdir() if p.name.startswith(".new-")] == []
