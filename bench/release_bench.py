#!/usr/bin/env python3
"""Time ``treeship release`` against ``ostree commit`` on the same generated tree.

Both tools get the same flags (a fresh archive-mode repository made by ``ostree init``,
canonical permissions) and the same seeded tree: about 3,000 files and 150 MB, ~30
binaries over 1 MB and many small files, with content that gzip shrinks about as much
as real ELF binaries (to ~35% of their size). Each run times both tools, alternating
which goes first, as whole subprocesses (wall clock, Python startup included), and
checks that both produced the same root tree. The table reports median/min/max wall
time, CPU time, peak RSS and the ratio of the medians (treeship / ostree).

    python bench/release_bench.py [--runs 3] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

BRANCH = "bench/x86_64"
MB = 1_000_000
BIG_FILE_MIN = 1_200_000
BIG_FILE_MAX = 8_000_000
SMALL_FILE_MAX = 256_000
BIG_SHARE = 0.70  # share of the bytes in the big binaries, as in a real sysroot
TOOLS = ("ostree", "treeship")
QUIET_CORES = 0.2  # more than this much CPU used by other processes makes a run suspect


# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSpec:
    """What to generate."""

    files: int = 3000
    total_bytes: int = 150 * MB
    big_files: int = 30
    seed: int = 20261126


@dataclass
class TreeInfo:
    """What was generated."""

    path: str
    files: int = 0
    big_files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    big_bytes: int = 0
    seconds: float = 0.0


class Content:
    """Deterministic file content that compresses like real binaries, quickly.

    A file is a sequence of segments: machine-code-like bytes (random bytes mapped
    through a skewed table, so gzip's Huffman stage gains but LZ77 finds little),
    string tables (words from a generated vocabulary), relocation/symbol-like tables
    (little-endian records with small deltas), already-compressed data (random bytes)
    and short alignment padding. Everything is made by C-speed primitives
    (``randbytes``, ``bytes.translate``, slicing) so 150 MB takes seconds.
    """

    # (kind, weight) of segments in a binary; tuned to gzip -6 ~35% like /usr/bin + /usr/lib.
    BINARY_MIX = (("code", 50), ("strings", 22), ("table", 12), ("random", 4), ("padding", 10))
    TEXT_MIX = (("strings", 85), ("table", 5), ("code", 10))

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.skew = self._skew_table(2.2)
        syllables = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 5)))
                     for _ in range(300)]
        words = [b"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(1200)]
        # Symbols share namespace-like prefixes, as in real string and symbol tables.
        prefixes = [b"".join(rng.choices(syllables, k=3)) + b"_" for _ in range(40)] + [b""] * 20
        seps = [b"\0", b" ", b"\n", b"/", b"."]
        # ~3 MB of "strings" to slice from; gzip's 32 KB window cannot see the reuse.
        self.pool = b"".join(rng.choice(prefixes) + w + rng.choice(seps) for w in rng.choices(words, k=250_000))
        self.names = words
        self._headers = 0

    def _header(self, n: int) -> bytes:
        """``n`` bytes of strings for a file's start, without drawing from the RNG.

        Drawing nothing means every other file of the tree stays as it was before this existed.
        """
        self._headers += 1
        start = self._headers * 104_729 % (len(self.pool) - n)
        return self.pool[start:start + n]

    def _skew_table(self, alpha: float) -> bytes:
        weights = [1 / (i + 1) ** alpha for i in range(256)]
        total = sum(weights)
        out = bytearray()
        cum = 0.0
        for i, w in enumerate(weights):
            cum += w
            while len(out) < min(256, round(cum / total * 256)):
                out.append(i)
        values = list(range(256))
        self.rng.shuffle(values)
        return bytes(values[b] for b in out).ljust(256, b"\0")

    def segment(self, kind: str, n: int) -> bytes:
        """``n`` bytes of one kind."""
        rng = self.rng
        if kind == "code":
            return rng.randbytes(n).translate(self.skew)
        if kind == "strings":
            start = rng.randrange(len(self.pool) - n) if n < len(self.pool) else 0
            return self.pool[start:start + n]
        if kind == "random":
            return rng.randbytes(n)
        if kind == "padding":
            return bytes(min(n, 4096))
        # table: records (address, type, info) with increasing addresses
        count = n // 16 + 1
        addr = rng.randrange(1 << 24)
        deltas = rng.randbytes(count)
        recs = []
        for d in deltas:
            addr += 8 + (d & 0x3F) * 8
            recs.append(struct.pack("<QII", addr, 0x403 if d & 0x80 else 0x8, d & 0x7F))
        return b"".join(recs)[:n]

    def write(self, f: BinaryIO, size: int, mix: tuple[tuple[str, int], ...]) -> None:
        """Write ``size`` bytes of segments drawn from ``mix``."""
        kinds = [k for k, _ in mix]
        weights = [w for _, w in mix]
        left = size
        while left > 0:
            kind = self.rng.choices(kinds, weights)[0]
            n = min(left, self.rng.randint(512, 16384))
            if kind == "padding" and left == size:
                data = self._header(min(n, 4096))  # no file starts with (or is only) zeros
            else:
                data = self.segment(kind, n)
            f.write(data)
            left -= len(data)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return lo * (hi / lo) ** rng.random()


def generate_tree(root: Path, spec: TreeSpec) -> TreeInfo:
    """Write the seeded tree under ``root`` (which must not exist)."""
    started = time.perf_counter()
    rng = random.Random(spec.seed)
    content = Content(rng)
    info = TreeInfo(path=str(root))
    root.mkdir(parents=True)

    # Directories: a sysroot-like skeleton plus random nesting (depth <= 5).
    dirs = ["usr/bin", "usr/sbin", "usr/lib", "usr/libexec", "usr/share", "usr/include", "etc"]
    for _ in range(max(10, spec.files // 16)):
        parent = rng.choice(dirs[2:])
        if parent.count("/") < 5:
            dirs.append(f"{parent}/{rng.choice(content.names).decode()}")
    dirs = sorted(set(dirs))
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    info.dirs = len({str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}) + 1

    # Sizes: big binaries take BIG_SHARE of the bytes, the rest is small files.
    nbig = min(spec.big_files, spec.files)
    big = [_log_uniform(rng, BIG_FILE_MIN, BIG_FILE_MAX) for _ in range(nbig)]
    small = [_log_uniform(rng, 64, SMALL_FILE_MAX) for _ in range(spec.files - nbig)]
    big_target = spec.total_bytes * BIG_SHARE if small else spec.total_bytes
    big = [max(BIG_FILE_MIN, int(s * big_target / sum(big))) for s in big] if big else []
    small_target = spec.total_bytes - sum(big)
    small = [min(SMALL_FILE_MAX, max(1, int(s * small_target / sum(small)))) for s in small] if small else []

    used: set[str] = set()

    def new_path(directory: str, suffix: str) -> Path:
        while True:
            name = rng.choice(content.names).decode() + suffix
            rel = f"{directory}/{name}"
            if rel not in used and rel not in dirs:
                used.add(rel)
                return root / rel

    bin_dirs = ["usr/bin", "usr/sbin", "usr/lib", "usr/libexec"]
    files: list[tuple[Path, int]] = []
    for size in big:
        d = rng.choice(bin_dirs)
        path = new_path(d, ".so" if d == "usr/lib" else "")
        with open(path, "wb") as f:
            content.write(f, size, Content.BINARY_MIX)
        os.chmod(path, 0o755)
        files.append((path, size))
        info.big_files += 1
        info.big_bytes += size
    for size in small:
        d = rng.choice(dirs)
        textual = d.startswith(("etc", "usr/share", "usr/include")) or rng.random() < 0.3
        path = new_path(d, rng.choice([".h", ".txt", ".conf", ".py", ""]) if textual else ".so")
        with open(path, "wb") as f:
            content.write(f, size, Content.TEXT_MIX if textual else Content.BINARY_MIX)
        # Some group-writable modes, so canonical permissions have something to do.
        mode = rng.choice([0o644, 0o644, 0o644, 0o664]) if textual else rng.choice([0o755, 0o755, 0o775])
        os.chmod(path, mode)
        files.append((path, size))
    info.files = len(files)
    info.bytes = sum(s for _, s in files)

    # A few relative symlinks, library-style.
    for path, _ in rng.sample(files, max(1, len(files) // 50)):
        link = path.with_name(path.name + ".1")
        if not link.exists():
            link.symlink_to(path.name)
            info.symlinks += 1
    info.seconds = round(time.perf_counter() - started, 2)
    return info


def warm_read(root: Path) -> int:
    """Read every file once so both tools start from the same warm page cache."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb", buffering=0) as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
    return total


# -- running the tools ------------------------------------------------------------------------


@dataclass
class Sample:
    """One timed command."""

    tool: str
    run: int
    order: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    other_cores: float  # CPU used by unrelated processes during the run, in cores
    tree: str
    attempts: int = 1


@dataclass
class Summary:
    """Per-tool statistics over the runs."""

    tool: str
    median_s: float
    min_s: float
    max_s: float
    cpu_s: float
    max_rss_mb: float
    other_cores: float
    ratio: float = 0.0
    walls: list[float] = field(default_factory=list)


def cpu_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat; idle and iowait excluded)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait (up to ``limit_s``) until other processes use under ``threshold`` cores; return that load."""
    deadline = time.monotonic() + limit_s
    while True:
        before, t0 = cpu_busy_s(), time.monotonic()
        time.sleep(1.0)
        load = (cpu_busy_s() - before) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load


# Runs one command and reports on it. A separate small process because a child's peak RSS
# (ru_maxrss) starts from the RSS of whoever spawned it: measured from this process, both
# tools would show at least this benchmark's own tens of MB. Spawned from this shim (a bare
# ``python -I -S``, ~10 MB) the floor is the shim's RSS, well below either tool's.
_SHIM = r"""
import json, os, sys, time

def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")

report, cmd = sys.argv[1], sys.argv[2:]
b0, t0 = busy(), time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
wall, b1 = time.perf_counter() - t0, busy()
with open(report, "w") as f:
    json.dump({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
               "busy": b1 - b0, "exit": os.waitstatus_to_exitcode(status)}, f)
"""


@dataclass
class Measured:
    """What the shim saw of one command."""

    wall: float
    user: float
    sys: float
    maxrss_kb: int
    busy: float  # CPU seconds all cores spent busy meanwhile, this command included
    exit: int

    @property
    def other_cores(self) -> float:
        """CPU used by everything else while the command ran, in cores."""
        return max(0.0, (self.busy - self.user - self.sys) / self.wall)


def timed(cmd: list[str], log: Path) -> Measured:
    """Run ``cmd`` (stdout and stderr to ``log``) under the shim; fail loudly if it fails."""
    report = log.with_suffix(".json")
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-I", "-S", "-c", _SHIM, str(report), *cmd],
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    m = Measured(**json.loads(report.read_text()))
    if m.exit != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {m.exit}):\n{log.read_text(errors='replace')[-2000:]}")
    return m


def root_tree(ostree: str, repo: Path) -> str:
    """The commit's root dirtree and dirmeta checksums, as ``ostree ls`` reports them."""
    out = subprocess.run([ostree, "ls", f"--repo={repo}", "-C", "-d", BRANCH, "/"],
                         check=True, capture_output=True, text=True).stdout.split()
    return f"{out[4]}/{out[5]}"


def objects_bytes(repo: Path) -> int:
    """Bytes of the content objects (``.filez``) in an archive repo."""
    return sum(p.stat().st_size for p in (repo / "objects").rglob("*.filez"))


def command(tool: str, exe: str, tree: Path, repo: Path) -> list[str]:
    """The same job for each tool: commit ``tree`` to BRANCH with canonical permissions."""
    if tool == "ostree":
        return [exe, "commit", f"--repo={repo}", f"--branch={BRANCH}", "--canonical-permissions",
                "--subject=bench", str(tree)]
    return [exe, "release", str(tree), "--branch", BRANCH, "--repo", str(repo), "--version", "bench", "--json"]


def sample_once(tool: str, exes: dict[str, str], tree: Path, work: Path, run: int, pos: int,
                quiet_wait: float) -> Sample:
    """One timed command of ``tool`` into a fresh archive repo (left in ``work``)."""
    repo = work / f"repo-{run}-{tool}"
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run([exes["ostree"], "init", f"--repo={repo}", "--mode=archive"], check=True)
    os.sync()  # the previous run's writeback must not land on this one
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    m = timed(command(tool, exes[tool], tree, repo), work / f"log-{run}-{tool}.txt")
    print(f"  run {run + 1} {tool:9} {m.wall:7.2f} s wall, {m.user:6.2f} s user, {m.sys:5.2f} s sys, "
          f"{m.maxrss_kb / 1024:5.1f} MB peak RSS, other processes {m.other_cores:4.2f} cores", file=sys.stderr)
    return Sample(tool=tool, run=run, order=pos, wall_s=round(m.wall, 3), user_s=round(m.user, 3),
                  sys_s=round(m.sys, 3), max_rss_mb=round(m.maxrss_kb / 1024, 1),
                  other_cores=round(m.other_cores, 2), tree=root_tree(exes["ostree"], repo))


def run_all(exes: dict[str, str], tree: Path, work: Path, runs: int, keep: bool,
            quiet_wait: float, retries: int) -> tuple[list[Sample], int]:
    """Alternate the tools over ``runs`` rounds, each into a fresh archive repo.

    A sample taken while other processes kept more than QUIET_CORES busy is taken
    again (up to ``retries`` times); the least disturbed attempt is kept.
    """
    samples: list[Sample] = []
    compressed = 0
    for run in range(runs):
        order = TOOLS if run % 2 else TOOLS[::-1]
        for pos, tool in enumerate(order):
            best = sample_once(tool, exes, tree, work, run, pos, quiet_wait)
            for attempt in range(retries):
                if best.other_cores <= QUIET_CORES:
                    break
                again = sample_once(tool, exes, tree, work, run, pos, quiet_wait)
                again.attempts = attempt + 2
                best = min(best, again, key=lambda s: s.other_cores)
            samples.append(best)
            repo = work / f"repo-{run}-{tool}"
            if not compressed and tool == "ostree":
                compressed = objects_bytes(repo)
            if not keep:
                shutil.rmtree(repo)
    return samples, compressed


def summarize(samples: list[Sample]) -> dict[str, Summary]:
    """Median/min/max per tool; ratio is median(tool) / median(ostree)."""
    out: dict[str, Summary] = {}
    for tool in TOOLS:
        mine = [s for s in samples if s.tool == tool]
        walls = [s.wall_s for s in mine]
        out[tool] = Summary(tool=tool, median_s=round(statistics.median(walls), 3), min_s=min(walls),
                            max_s=max(walls), cpu_s=round(statistics.median(s.user_s + s.sys_s for s in mine), 2),
                            max_rss_mb=max(s.max_rss_mb for s in mine),
                            other_cores=max(s.other_cores for s in mine), walls=walls)
    for s in out.values():
        s.ratio = round(s.median_s / out["ostree"].median_s, 3)
    return out


# -- reporting --------------------------------------------------------------------------------


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount point from /proc/self/mounts)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, mnt, fstype, *_ = line.split()
            mnt = mnt.replace("\\040", " ")
            inside = mnt == "/" or target == mnt or target.startswith(mnt + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def machine(exes: dict[str, str], work: Path) -> dict[str, Any]:
    """Where the numbers come from."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    ostree_version = subprocess.run([exes["ostree"], "--version"], capture_output=True, text=True).stdout
    treeship_version = subprocess.run([exes["treeship"], "--version"], capture_output=True, text=True).stdout
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gb": round(mem / 1e9, 1),
        "kernel": platform.release(),
        "workdir_fs": filesystem(work),
        "python": platform.python_version(),
        "ostree": next((ln.split("'")[1] for ln in ostree_version.splitlines() if "Version" in ln), "unknown"),
        "treeship": treeship_version.strip().rsplit(" ", 1)[-1] or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def print_table(m: dict[str, Any], tree: TreeInfo, compressed: int, samples: list[Sample],
                summary: dict[str, Summary], trees: set[str]) -> None:
    """The human report."""
    runs = len(samples) // len(TOOLS)
    retaken = sum(s.attempts - 1 for s in samples)
    print(f"treeship release vs ostree commit: {runs} run(s), order alternating, fresh archive repo each"
          + (f", {retaken} sample(s) retaken on a busy machine" if retaken else ""))
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, Linux {m['kernel']}, "
          f"{m['workdir_fs']} workdir, ostree {m['ostree']}, treeship {m['treeship']}, Python {m['python']}")
    print(f"tree:    {tree.files} files ({tree.big_files} over 1 MB = {tree.big_bytes / MB:.1f} MB), "
          f"{tree.bytes / MB:.1f} MB, {tree.dirs} dirs, {tree.symlinks} symlinks; "
          f"archive objects {compressed / MB:.1f} MB ({100 * compressed / tree.bytes:.0f}% of input)")
    print()
    print(f"{'tool':10} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7} {'peak RSS MB':>12} "
          f"{'ratio':>6} {'max other load':>15}")
    for tool in TOOLS:
        s = summary[tool]
        print(f"{tool:10} {s.median_s:9.2f} {s.min_s:7.2f} {s.max_s:7.2f} {s.cpu_s:7.2f} "
              f"{s.max_rss_mb:12.1f} {s.ratio:5.2f}x {s.other_cores:10.2f} cores")
    print()
    ratio = summary["treeship"].ratio
    print(f"treeship / ostree (median wall): {ratio:.2f}x  (target <= 1.00x: {'met' if ratio <= 1.0 else 'NOT met'})")
    busy = max(s.other_cores for s in summary.values())
    if busy > QUIET_CORES:
        print(f"WARNING: other processes used up to {busy:.2f} of {m['nproc']} cores during the runs; "
              "the numbers are not a fair comparison (treeship loses most from a busy machine)")
    if len(trees) == 1:
        print(f"root tree (dirtree/dirmeta): {next(iter(trees))} -- identical for both tools in every run")
    else:
        print(f"WARNING: the tools produced different root trees: {sorted(trees)}")


def find_treeship(given: str | None) -> str:
    """``--treeship``, else the ``treeship`` next to this Python, else on PATH."""
    if given:
        return given
    beside = Path(sys.executable).with_name("treeship")
    if beside.exists():
        return str(beside)
    found = shutil.which("treeship")
    if not found:
        raise SystemExit("no treeship found next to this Python or on PATH; use --treeship PATH")
    return found


def compile_treeship(exe: str) -> None:
    """Byte-compile the treeship package that ``exe`` runs, as installing it does.

    Where PYTHONDONTWRITEBYTECODE is set (this machine's environment, many container
    images), an editable install would otherwise compile every module changed since its
    last .pyc in every timed run: 5-10 ms per command that no installed treeship pays.
    """
    with open(exe, "rb") as f:
        first = f.readline()
    python = first[2:].decode().split()[0] if first.startswith(b"#!") else sys.executable
    where = subprocess.run([python, "-c", "import os, treeship; print(os.path.dirname(treeship.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", where], check=True)


def main(argv: list[str] | None = None) -> int:
    """Parse options, generate, warm, run, report. Exit 1 if the trees differ."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds of both tools (default 3)")
    ap.add_argument("--workdir", type=Path, help="where the tree and repos go (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the tree, repos and logs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--treeship", help="treeship executable (default: next to sys.executable)")
    ap.add_argument("--ostree", default=shutil.which("ostree"), help="ostree executable (default: on PATH)")
    ap.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                    help=f"before each run, wait up to this long for other processes to use under {QUIET_CORES} "
                         "cores (default 60; 0 to not wait)")
    ap.add_argument("--retries", type=int, default=2,
                    help=f"take a sample again if other processes used over {QUIET_CORES} cores (default 2)")
    ap.add_argument("--files", type=int, default=TreeSpec.files, help="files in the tree (default 3000)")
    ap.add_argument("--size-mb", type=int, default=TreeSpec.total_bytes // MB, help="tree size (default 150)")
    ap.add_argument("--big-files", type=int, default=TreeSpec.big_files, help="files over 1 MB (default 30)")
    ap.add_argument("--seed", type=int, default=TreeSpec.seed, help="tree generator seed")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if not args.ostree:
        ap.error("no ostree on PATH; use --ostree PATH")
    exes = {"ostree": args.ostree, "treeship": find_treeship(args.treeship)}
    compile_treeship(exes["treeship"])

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="release-bench-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="release-bench-"))
    try:
        spec = TreeSpec(files=args.files, total_bytes=args.size_mb * MB, big_files=args.big_files, seed=args.seed)
        print(f"generating {spec.files} files, {args.size_mb} MB in {work} ...", file=sys.stderr)
        tree = generate_tree(work / "tree", spec)
        print(f"  generated in {tree.seconds:.1f} s; warm-up read of {warm_read(work / 'tree') / MB:.0f} MB",
              file=sys.stderr)
        for exe in exes.values():  # load the executables and their libraries once, untimed
            subprocess.run([exe, "--version"], capture_output=True, check=True)
        m = machine(exes, work)
        samples, compressed = run_all(exes, work / "tree", work, args.runs, args.keep, args.quiet_wait,
                                      args.retries)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(samples)
    trees = {s.tree for s in samples}
    if args.json:
        print(json.dumps({
            "machine": m, "tree": asdict(tree), "archive_objects_bytes": compressed,
            "commands": {t: command(t, exes[t], Path("TREE"), Path("REPO")) for t in TOOLS},
            "summary": {t: asdict(s) for t, s in summary.items()},
            "ratio": summary["treeship"].ratio, "same_tree": len(trees) == 1,
            "samples": [asdict(s) for s in samples],
        }, indent=2))
    else:
        print_table(m, tree, compressed, samples, summary, trees)
    return 0 if len(trees) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
