"""Kill the pusher, the receiver or the connection at many points of a push, then retry.

One push of two branches (``main/x86_64`` from v1 to v2, ``extra/x86_64`` created) into a
server that holds v1, with signatures required and a signed summary. Each fault point
starts from a fresh copy of that server, runs the push through tests/reliability/
faultproxy.py (a stand-in for ssh that relays the stream and injects one fault at an exact
byte or frame), and then checks, with the ``ostree`` CLI:

- ``ostree fsck`` is clean; every ref is its old or its new value; no ref points at a
  commit that is marked partial or whose tree does not load;
- a plain retry lands both refs and sends no more than 1.05 × the bytes of the objects the
  server still lacks (+ 4 KiB), and leaves no session directory behind.

Points are chosen by byte offset (spread over the whole stream, both ways) and by protocol
phase (just before / after a given frame). Receiver-side phases that happen after the
last byte (placing commits, moving refs, publishing the summary) are reached by running
the receiver under ``strace -e inject=SYSCALL:signal=SIGKILL:when=N``: it dies on entering
its Nth such call, N read from a dry run of the same push. A few points go through the real
sshd: the ssh client killed, or the receiver killed by its PID found in /proc.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pushkit import (
    BRANCH,
    fsck,
    no_session_leftovers,
    object_path,
    ostree,
    partial_commits,
    refs,
    refs_complete,
    tree_objects,
    treeship_command,
    write_tree,
)

PROXY = Path(__file__).with_name("faultproxy.py")
EXTRA = "extra/x86_64"
STRACE = shutil.which("strace")
OVERHEAD = 4096  # bytes a retry may send beyond what is missing


# -- the scenario -----------------------------------------------------------------------------


def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*treeship_command(), *map(str, args)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, check=False)
    if check:
        assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@dataclass
class Scenario:
    root: Path
    local: Path
    base: Path  # the server before the push (v1 on main): copied for each point
    policy: Path
    before: dict[str, str]
    after: dict[str, str]
    sizes: dict[str, int]  # every object the push sends, and its size
    up_total: int = 0
    down_total: int = 0
    main_calls: list[tuple[str, str]] = field(default_factory=list)  # (syscall, path): main thread's, and syncfs
    worker_links: int = 0  # object placements (linkat) by the receiver's busiest thread

    def missing(self, srv: Path) -> tuple[int, int]:
        """(objects, bytes) of the push the server does not have (commits marked partial count)."""
        partial = partial_commits(srv)
        gone = [n for n in self.sizes if n.endswith(".commitmeta") or not object_path(srv, n).exists()
                or (n.endswith(".commit") and n.removesuffix(".commit") in partial)]
        return len(gone), sum(self.sizes[n] for n in gone)


def _random_files(d: Path, n: int, size: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"blob{i:02}").write_bytes(rng.randbytes(size))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, ed25519_key) -> Scenario:
    root = tmp_path_factory.mktemp("faults")
    local = root / "local"
    sign = ["--sign-ed25519", str(ed25519_key.secret)]
    tree = write_tree(root / "tree", n=40, tag="v1")
    _random_files(tree / "opt" / "v1", 2, 100_000, 1)
    run("release", tree, "--repo", local, "--branch", BRANCH, "--version", "1", *sign)
    policy = root / "policy.toml"
    policy.write_text(f'[[signatures]]\nbranches = ["*"]\ned25519_keys = ["{ed25519_key.public_b64}"]\n'
                      f'[summary]\ned25519_secret = "{ed25519_key.secret}"\n')
    base = root / "base"
    ostree("init", "--repo", base, "--mode=archive")
    _push(local, base, root / "seed", [BRANCH], policy)
    before = {BRANCH: ostree("rev-parse", "--repo", base, BRANCH).stdout.strip()}

    for i in range(10):
        (tree / "usr" / "share" / "doc" / f"file{i:03}.txt").write_text(f"v2 page {i}\n" * 50)
    _random_files(tree / "opt" / "v2", 4, 150_000, 2)
    for i in range(30):
        (tree / "usr" / "share" / "new").mkdir(parents=True, exist_ok=True)
        (tree / "usr" / "share" / "new" / f"n{i:02}").write_text(f"new file {i}\n" * (i + 3))
    v2 = json.loads(run("release", tree, "--repo", local, "--branch", BRANCH, "--version", "2", *sign,
                        "--json").stdout)["commit"]
    extra = write_tree(root / "extra-tree", n=10, tag="extra")
    _random_files(extra / "var" / "blobs", 20, 8_000, 3)
    e1 = json.loads(run("release", extra, "--repo", local, "--branch", EXTRA, *sign, "--json").stdout)["commit"]
    after = {BRANCH: v2, EXTRA: e1}

    names = (tree_objects(local, v2) | tree_objects(local, e1)) - tree_objects(local, before[BRANCH])
    names |= {f"{v2}.commit", f"{e1}.commit", f"{v2}.commitmeta", f"{e1}.commitmeta"}
    sizes = {n: object_path(local, n).stat().st_size for n in names}
    sc = Scenario(root, local, base, policy, before, after, sizes)

    # a dry run: the whole push through the proxy (no fault), the receiver under strace; its
    # flush made slow (entered 0.3 s late), so that a receiver going on without waiting for
    # it would show in the order of the calls
    srv = _fresh(sc, root / "dry")
    trace = root / "dry.trace"
    prefix = (f"{STRACE} -f -qq -o {trace} -e trace=linkat,rename,renameat,unlinkat,syncfs "
              "-e inject=syncfs:delay_enter=300000 ") if STRACE else ""
    p, report = _faulted(sc, srv, root / "dry-run", None, None, prefix)
    out = json.loads(p.stdout)
    assert out["ok"] and out["bytes_sent"] == sum(sizes.values()), (out, sum(sizes.values()))
    assert out["objects_sent"] == len(sizes)
    sc.up_total, sc.down_total = report["up"], report["down"]
    assert sc.up_total == out["wire_bytes"]
    if STRACE:
        sc.main_calls, sc.worker_links = _parse_trace(trace.read_text())
    return sc


def _push(local: Path, srv: Path, work: Path, branches: list[str], policy: Path, check: bool = True):
    """A plain push through the proxy with no fault (the same path as the faulted ones)."""
    p, _ = _faulted_raw(local, srv, work, None, None, "", policy, branches)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _fresh(sc: Scenario, srv: Path) -> Path:
    shutil.copytree(sc.base, srv, symlinks=True)
    return srv


def _faulted(sc: Scenario, srv: Path, work: Path, trigger: dict | None, action: str | None,
             receive_prefix: str = "", mode: str = "local", ssh: str = "", url: str = ""):
    return _faulted_raw(sc.local, srv, work, trigger, action, receive_prefix, sc.policy, [BRANCH, EXTRA],
                        mode, ssh, url)


def _faulted_raw(local: Path, srv: Path, work: Path, trigger: dict | None, action: str | None,
                 receive_prefix: str, policy: Path, branches: list[str], mode: str = "local", ssh: str = "",
                 url: str = ""):
    """Run one push through the proxy; wait until the proxy and every receiver of ``srv`` are gone."""
    work.mkdir(parents=True, exist_ok=True)
    lock = work / "lock"
    lock.touch()
    spec = {"mode": mode, "trigger": trigger, "action": action, "lock": str(lock),
            "report": str(work / "report.json"), "receiver_match": str(srv),
            "receive_args": ["--timeout", "60", "--config", str(policy)]}
    (work / "spec.json").write_text(json.dumps(spec))
    ssh_command = f"{shlex.quote(sys.executable)} {shlex.quote(str(PROXY))} {shlex.quote(str(work / 'spec.json'))}"
    args = ["push", "--repo", local, "--ssh-command", f"{ssh_command} {ssh}".strip()]
    if mode == "local":
        args += ["--receive-command", receive_prefix + shlex.join(treeship_command()), f"ssh://fault{srv}"]
    else:
        args += [url]
    p = run(*args, *branches, "--json", check=False)
    _wait_gone(lock, srv)
    report_file = work / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return p, report


def _wait_gone(lock: Path, srv: Path) -> None:
    """Block until the proxy has exited (its flock is free) and no receiver of ``srv`` runs."""
    done = threading.Event()

    def take() -> None:
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
        done.set()

    threading.Thread(target=take, daemon=True).start()
    assert done.wait(120), "the fault proxy did not exit"
    for pid in _receivers(srv):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], 120)
            assert ready, f"receiver {pid} still running"
        finally:
            os.close(fd)


def _receivers(srv: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"receive" in args and str(srv).encode() in args:
                pids.append(int(entry))
    return pids


_CALL = re.compile(r"^(\d+)\s+(linkat|rename|renameat|unlinkat|syncfs)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (syncfs) resumed>(.*)$")


def _parse_trace(text: str) -> tuple[list[tuple[str, str]], int]:
    """The receiver's main-thread rename/unlink calls and its syncfs (made by a thread of its
    own, placed where it returned) in order, and the most linkat of one thread (objects are
    placed by the reading thread, large ones by a verify thread)."""
    matches = [m for m in (_CALL.match(line) or _RESUMED.match(line) for line in text.splitlines()) if m]
    main = min((int(m.group(1)) for m in matches), default=None)  # the main thread's id is the process id
    calls: list[tuple[str, str]] = []
    links: dict[int, int] = {}
    for m in matches:
        pid, name, args = int(m.group(1)), m.group(2), m.group(3)
        paths = re.findall(r'"([^"]*)"', args)
        if name == "syncfs":
            if not args.endswith("<unfinished ...>"):  # it returned here (strace split it if it had to wait)
                calls.append((name, ""))
        elif pid == main and name in ("rename", "renameat", "unlinkat"):
            calls.append((name, paths[-1] if paths else ""))
        if name == "linkat":
            links[pid] = links.get(pid, 0) + 1
    return calls, max(links.values(), default=0)


# -- the points -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    id: str
    action: str  # cut | kill-pusher | kill-receiver | kill-ssh
    trigger: dict | None = None  # for the proxy
    fraction: float | None = None  # an up-stream byte offset, as a fraction of the whole stream
    syscall: str | None = None  # strace: kill the receiver on entering this call…
    call_match: str | None = None  # …the first main-thread one whose path matches (regex), or
    nth_link: float | None = None  # …the linkat at this fraction of one thread's placements
    ssh: bool = False  # through the real sshd


def _frame(direction: str, ftype: str, edge: str = "before", nth: int = 1, objtype: int | None = None) -> dict:
    t = {"dir": direction, "frame": ftype, "edge": edge, "nth": nth}
    if objtype is not None:
        t["objtype"] = objtype
    return t


POINTS = [
    # the connection drops after N bytes of the pusher's stream (spread over all of it)
    *[Point(f"cut-up-{f:g}", "cut", fraction=f) for f in
      (0.00002, 0.0001, 0.0005, 0.01, 0.05, 0.12, 0.25, 0.37, 0.5, 0.63, 0.75, 0.88, 0.95, 0.99, 0.9999)],
    # … or at a protocol phase, either way
    Point("cut-before-update", "cut", _frame("up", "U")),
    Point("cut-after-query", "cut", _frame("up", "Q", "after")),
    Point("cut-before-first-dirtree", "cut", _frame("up", "O", objtype=2)),
    Point("cut-before-first-commit", "cut", _frame("up", "O", objtype=4)),
    Point("cut-before-commitmeta", "cut", _frame("up", "O", objtype=6)),
    Point("cut-before-finish", "cut", _frame("up", "F")),
    Point("cut-down-before-preflight", "cut", _frame("down", "P")),
    Point("cut-down-before-missing", "cut", _frame("down", "M")),
    Point("cut-down-before-status", "cut", _frame("down", "S")),
    # the pusher dies (SIGKILL)
    *[Point(f"kill-pusher-{f:g}", "kill-pusher", fraction=f) for f in (0.15, 0.45, 0.8, 0.97)],
    Point("kill-pusher-after-finish", "kill-pusher", _frame("up", "F", "after")),
    Point("kill-pusher-before-status", "kill-pusher", _frame("down", "S")),
    # the receiver dies (SIGKILL) while the stream goes on…
    *[Point(f"kill-receiver-{f:g}", "kill-receiver", fraction=f) for f in (0.3, 0.6, 0.9)],
    Point("kill-receiver-after-finish", "kill-receiver", _frame("up", "F", "after")),
    Point("kill-receiver-before-status", "kill-receiver", _frame("down", "S")),
    # … or at an exact call: placing objects, after the commits landed, between refs, publishing
    Point("receiver-killed-at-first-object-link", "strace", syscall="linkat", nth_link=0.0),
    Point("receiver-killed-mid-object-links", "strace", syscall="linkat", nth_link=0.5),
    Point("receiver-killed-moving-new-directories-in", "strace", syscall="renameat", call_match=r"^[0-9a-f]{2}$#2"),
    Point("receiver-killed-syncing-objects", "strace", syscall="syncfs", call_match=r"^$"),
    Point("receiver-killed-before-unmarking-partial", "strace", syscall="unlinkat", call_match=r"\.commitpartial$"),
    Point("receiver-killed-merging-signatures", "strace", syscall="renameat", call_match=r"\.commitmeta$"),
    Point("receiver-killed-before-first-ref", "strace", syscall="rename", call_match=r"/refs/heads/.*x86_64$"),
    Point("receiver-killed-between-refs", "strace", syscall="rename", call_match=r"/refs/heads/.*x86_64$#2"),
    Point("receiver-killed-regenerating-summary", "strace", syscall="renameat", call_match=r"^summary$"),
    Point("receiver-killed-before-summary-generation-moved-in", "strace", syscall="rename",
          call_match=r"/treeship-summary/[0-9a-f]+-[0-9a-f]+(\.refs-[0-9a-f]+)?$"),
    Point("receiver-killed-before-summary-switch", "strace", syscall="rename",
          call_match=r"/treeship-summary/current$"),
    # through the real sshd
    Point("ssh-client-killed-0.3", "kill-ssh", fraction=0.3, ssh=True),
    Point("ssh-client-killed-0.85", "kill-ssh", fraction=0.85, ssh=True),
    Point("ssh-client-killed-before-status", "kill-ssh", _frame("down", "S"), ssh=True),
    Point("ssh-receiver-killed-0.5", "kill-receiver", fraction=0.5, ssh=True),
]


def _strace_prefix(sc: Scenario, point: Point) -> str:
    if point.nth_link is not None:
        n = max(1, int(sc.worker_links * point.nth_link))
    else:
        pattern, _, nth = point.call_match.partition("#")
        hits = [i for i, (name, path) in enumerate(sc.main_calls) if name == point.syscall and re.search(pattern, path)]
        assert len(hits) >= int(nth or 1), (point, sc.main_calls)
        index = hits[int(nth or 1) - 1]
        n = sum(1 for name, _ in sc.main_calls[:index + 1] if name == point.syscall)
    sc_name = point.syscall
    return f"{STRACE} -f -qq -o /dev/null -e trace={sc_name} -e inject={sc_name}:signal=SIGKILL:when={n} "


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_fault_then_retry(point: Point, scenario: Scenario, tmp_path: Path, figures, server):
    sc = scenario
    trigger = point.trigger
    if point.fraction is not None:
        trigger = {"dir": "up", "bytes": max(1, int(sc.up_total * point.fraction))}
    ssh = url = prefix = ""
    mode = "local"
    if point.action == "strace":
        if not STRACE:
            pytest.skip("strace is not installed")
        prefix = _strace_prefix(sc, point)
    if point.ssh:
        s = server(policy=sc.policy.read_text(), name="srv")
        shutil.rmtree(s.repo)
        srv = _fresh(sc, s.repo)
        mode, ssh, url = "ssh", s.ssh, s.url
    else:
        srv = _fresh(sc, tmp_path / "srv")

    p, report = _faulted(sc, srv, tmp_path / "fault", trigger, None if point.action == "strace" else point.action,
                         prefix, mode, ssh, url)

    record = {"kind": "fault", "point": point.id, "action": point.action, "rc": p.returncode,
              "where": report.get("where") or (prefix.split("inject=")[-1].strip() if prefix else "")}
    figures.append(record)
    if point.action != "strace":
        assert report.get("fired"), f"the fault did not fire: {report}\n{p.stderr}"
    # the push failed, or (killed after the refs moved) it may have landed
    assert p.returncode in (0, 11, -9), p.stderr
    if p.returncode == 11:
        assert p.stderr.startswith("treeship: error: ") and p.stderr.count("\n") == 1, p.stderr
    fsck(srv)
    now = refs(srv)
    for ref in sc.after:
        assert now.get(ref) in (sc.before.get(ref), sc.after[ref]), (ref, now)
    refs_complete(srv)
    missing_objects, missing_bytes = sc.missing(srv)
    record.update(missing_objects=missing_objects, missing_bytes=missing_bytes, refs_moved=now == sc.after)

    retry = _push(sc.local, srv, tmp_path / "retry", [BRANCH, EXTRA], sc.policy, check=False)
    out = json.loads(retry.stdout) if retry.stdout else {}
    record.update(retry_ok=retry.returncode == 0, retry_bytes=out.get("bytes_sent"),
                  retry_objects=out.get("objects_sent"))
    assert retry.returncode == 0, retry.stderr
    assert out["bytes_sent"] <= 1.05 * missing_bytes + OVERHEAD, (out, missing_bytes)
    assert out["objects_sent"] <= missing_objects
    fsck(srv)
    assert refs(srv) == sc.after
    refs_complete(srv)
    no_session_leftovers(srv)
    view = ostree("summary", "--view", "--repo", srv).stdout
    assert all(f"* {ref}" in view and commit in view for ref, commit in sc.after.items()), view


def test_objects_reach_the_disk_before_any_commit_is_complete_or_ref_moves(scenario: Scenario):
    """Power loss is not simulated here, but its precondition is checked on the dry run's
    trace: once every object is placed, the receiver flushes the file system (one syncfs,
    as libostree does) before it unmarks a commit partial or renames a ref in."""
    if not STRACE:
        pytest.skip("strace is not installed")
    calls = scenario.main_calls
    syncs = [i for i, (name, _) in enumerate(calls) if name == "syncfs"]
    assert len(syncs) == 1, calls
    unmark = next(i for i, (name, path) in enumerate(calls) if name == "unlinkat" and path.endswith(".commitpartial"))
    first_ref = next(i for i, (name, path) in enumerate(calls) if name == "rename" and "/refs/heads/" in path)
    assert syncs[0] < unmark < first_ref, calls
