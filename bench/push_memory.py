#!/usr/bin/env python3
"""The receiver's peak memory against the size of a push: the issue's "≤ 100 MB whatever
the push size (check with a 10× larger tree)".

For each scale, the seeded tree of bench/release_bench.py is made that many times larger
(files, bytes and big binaries alike), released with ``treeship release`` into a local
archive repository, and pushed as a first push into an empty one over a real sshd on
127.0.0.1 (tests/sshd_server.py). The receiver runs under GNU time for its peak RSS.

    python bench/push_memory.py [--scales 1,10] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import release_bench  # noqa: E402
import sshd_server  # noqa: E402

BRANCH = "bench/x86_64"
TIME = "/usr/bin/time"


def measure(work: Path, scale: int, treeship: str, key: sshd_server.ClientKey) -> dict[str, object]:
    base = release_bench.TreeSpec()
    spec = release_bench.TreeSpec(base.files * scale, base.total_bytes * scale, base.big_files * scale, base.seed)
    tree = work / f"tree-{scale}"
    release_bench.generate_tree(tree, spec)
    local, dest = work / f"local-{scale}", work / f"dest-{scale}"
    for repo in (local, dest):
        subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    subprocess.run([treeship, "release", str(tree), "--branch", BRANCH, "--repo", str(local), "--version", "1"],
                   check=True, capture_output=True)
    objects = list((local / "objects").glob("*/*"))
    rss_file = work / f"receiver-{scale}.rss"
    receive = f"{TIME} -o {rss_file} -f %M {treeship}"
    started = time.monotonic()
    p = subprocess.run([treeship, "push", "--repo", str(local), "--ssh-command", key.ssh_command,
                        "--receive-command", receive, key.url(dest), BRANCH, "--json"],
                       capture_output=True, text=True)
    seconds = time.monotonic() - started
    if p.returncode != 0:
        raise SystemExit(f"push failed: {p.stderr.strip()}")
    fsck = subprocess.run(["ostree", "fsck", f"--repo={dest}"], capture_output=True, text=True)
    out = json.loads(p.stdout)
    return {"scale": scale, "files": spec.files, "tree_bytes": spec.total_bytes, "objects": len(objects),
            "objects_bytes": sum(o.stat().st_size for o in objects), "objects_sent": out["objects_sent"],
            "push_s": round(seconds, 2), "receiver_peak_rss_mb": round(int(rss_file.read_text().split()[-1]) / 1024, 1),
            "fsck_ok": fsck.returncode == 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,10", help="comma-separated tree scales (default 1,10)")
    ap.add_argument("--workdir", type=Path, help="where everything goes (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--treeship", help="treeship executable (default: next to this Python)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    treeship = release_bench.find_treeship(args.treeship)
    release_bench.compile_treeship(treeship)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="push-memory-", dir=args.workdir)).resolve()
    rows = []
    try:
        with sshd_server.SshServer(work / "sshd", path_dirs=[str(Path(treeship).parent)]) as server:
            key = server.add_key()
            for scale in (int(s) for s in args.scales.split(",")):
                print(f"scale {scale}: generating, releasing, pushing ...", file=sys.stderr)
                rows.append(measure(work, scale, treeship, key))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("scale   files   tree MB  objects  objects MB  push s  receiver peak RSS  fsck")
    for r in rows:
        print(f"{r['scale']:>5} {r['files']:>7} {r['tree_bytes'] / 1e6:>9.0f} {r['objects']:>8} "
              f"{r['objects_bytes'] / 1e6:>11.1f} {r['push_s']:>7} {r['receiver_peak_rss_mb']:>14} MB  "
              f"{'clean' if r['fsck_ok'] else 'ERRORS'}")
    return 0 if all(r["fsck_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
