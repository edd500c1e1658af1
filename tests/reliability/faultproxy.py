"""A stand-in for `ssh` that relays a push and injects one fault at an exact point of the stream.

Test-only: `treeship push --ssh-command "python faultproxy.py SPEC.json [real ssh argv]"`.
treeship appends its usual ssh arguments (``-o … -- host 'treeship receive --repo R'``);
in ``local`` mode the proxy runs that remote command itself (no sshd: fast), in ``ssh``
mode it runs the real ssh command line it was given.

It parses the frames going each way (``up``: pusher → receiver, ``down``: receiver →
pusher) and, at the point the spec names, acts once:

- ``{"dir": "up", "bytes": N}``: after exactly N bytes have gone that way;
- ``{"dir": "down", "frame": "S", "nth": 1, "objtype": 4, "edge": "before"}``: just before
  (or after) the nth frame of that type (OBJECT frames: of that object type) goes through.

Actions: ``cut`` (stop relaying, hang up both ways: a dropped connection), ``kill-pusher``
(SIGKILL its parent, the pusher, then hang up toward the receiver), ``kill-receiver``
(SIGKILL the receiver: its child in local mode, found by its command line in /proc in ssh
mode), ``kill-ssh`` (SIGKILL the real ssh client: the TCP connection dies). After acting it
relays nothing more, waits for the receiver to exit, writes a JSON report and exits.

It holds an exclusive flock on ``spec["lock"]`` from start to exit, so the test knows when
the proxy (and so the receiver) is gone even when the pusher was killed: it takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import threading

HEADER = 5


class Proxy:
    def __init__(self, spec: dict, argv: list[str]) -> None:
        self.spec = spec
        self.trigger = spec.get("trigger")
        self.action = spec.get("action")
        # plain pipes, each end owned by one relay thread (the only one that closes it)
        child_in, self.to_child = os.pipe()
        self.from_child, child_out = os.pipe()
        self.child = subprocess.Popen(argv, stdin=child_in, stdout=child_out)
        os.close(child_in)
        os.close(child_out)
        self.fired = threading.Event()
        self.lock = threading.Lock()
        self.count = {"up": 0, "down": 0}
        self.frames = {"up": 0, "down": 0}
        self.seen: dict[tuple[str, bytes, int | None], int] = {}
        self.where = ""
        self.receiver_pids: list[int] = []

    # -- relaying ----------------------------------------------------------------------------

    def relay(self, direction: str, src: int, dst: int) -> None:
        """Copy src to dst frame by frame until the end of the stream or the fault; then close both."""
        buf = bytearray()
        try:
            while not self.fired.is_set():
                try:
                    data = os.read(src, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    break
                buf += data
                while len(buf) >= HEADER:
                    length = int.from_bytes(buf[1:5], "big")
                    if len(buf) < HEADER + length:
                        break  # wait for the whole frame
                    frame = bytes(buf[:HEADER + length])
                    del buf[:HEADER + length]
                    if not self.forward(direction, frame, dst):
                        return
            if buf and not self.fired.is_set():
                self.forward(direction, bytes(buf), dst)
        finally:
            # the end of stream goes on; after the fault, both ends see the connection gone
            for fd in (src, dst):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def forward(self, direction: str, frame: bytes, dst: int) -> bool:
        """Relay one frame, or the part of it before the trigger; False once the fault fired."""
        t = self.trigger
        ftype = frame[:1]
        objtype = frame[5] if ftype == b"O" and len(frame) > 5 else None
        mine = t is not None and t["dir"] == direction
        match = False
        if mine and "frame" in t and ftype == t["frame"].encode() and t.get("objtype") in (None, objtype):
            key = (direction, ftype, t.get("objtype"))
            self.seen[key] = self.seen.get(key, 0) + 1
            match = self.seen[key] == t.get("nth", 1)
        if match and t.get("edge", "before") == "before":
            return self.fire(f"{direction}: before frame {ftype.decode()} #{self.seen[key]}", direction)
        if mine and "bytes" in t and self.count[direction] + len(frame) >= t["bytes"]:
            part = frame[:t["bytes"] - self.count[direction]]
            self.write(direction, dst, part)
            return self.fire(f"{direction}: after byte {self.count[direction]} "
                             f"({len(part)} of {len(frame)} bytes of frame {ftype.decode(errors='replace')} "
                             f"#{self.frames[direction] + 1})", direction)
        self.write(direction, dst, frame)
        self.frames[direction] += 1
        if match:
            return self.fire(f"{direction}: after frame {ftype.decode()} #{self.seen[key]}", direction)
        return True

    def write(self, direction: str, dst: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(dst, view)
            except OSError:
                return
            view = view[n:]
            self.count[direction] += n

    # -- the fault ---------------------------------------------------------------------------

    def fire(self, where: str, direction: str) -> bool:
        with self.lock:
            if self.fired.is_set():
                return False
            self.where = where
            if self.spec["mode"] == "ssh":
                self.receiver_pids = find_receivers(self.spec["receiver_match"])
            # saved before anything else: once the relays stop, the pusher sees the connection
            # go and may kill this proxy at once
            self.save(fired=True)
            self.fired.set()  # relay nothing more: each relay thread closes its two ends
            action = self.action
            if action == "kill-pusher":
                os.kill(os.getppid(), signal.SIGKILL)
            elif action == "kill-receiver":
                if self.spec["mode"] == "local":
                    self.child.kill()
                for pid in self.receiver_pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            elif action == "kill-ssh":
                self.child.kill()
            return False

    def save(self, rc: int | None = None, fired: bool | None = None) -> None:
        report = {"fired": self.fired.is_set() if fired is None else fired, "where": self.where, "up": self.count["up"],
                  "down": self.count["down"], "receiver_rc": rc, "action": self.action}
        tmp = self.spec["report"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, self.spec["report"])

    def run(self) -> int:
        up = threading.Thread(target=self.relay, args=("up", 0, self.to_child), daemon=True)
        down = threading.Thread(target=self.relay, args=("down", self.from_child, 1), daemon=True)
        up.start()
        down.start()
        rc = self.child.wait()
        down.join()
        for pid in self.receiver_pids:  # ssh mode: the receiver runs under sshd, not under us
            wait_pid(pid)
        return rc


def find_receivers(repo: str) -> list[int]:
    """PIDs of `treeship receive … --repo REPO` processes (argv elements, not a shell's -c string)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"receive" in args and repo.encode() in args:
            pids.append(int(entry))
    return pids


def wait_pid(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        select.select([fd], [], [], 120)
    finally:
        os.close(fd)


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    lock = open(spec["lock"], "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    if spec["mode"] == "local":
        argv = shlex.split(sys.argv[-1]) + spec.get("receive_args", [])
    else:
        argv = sys.argv[2:]
    proxy = Proxy(spec, argv)
    rc = proxy.run()
    proxy.save(rc)
    return 255 if proxy.fired.is_set() else rc


if __name__ == "__main__":
    sys.exit(main())
