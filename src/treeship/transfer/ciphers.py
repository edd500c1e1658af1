"""Which cipher the pusher's ssh asks for first: AES-GCM, where the CPU has AES instructions.

OpenSSH puts chacha20-poly1305 first by default because it is fast and constant-time on any
CPU. On a CPU with AES and carry-less multiply instructions AES-GCM is constant-time too,
and cheaper per byte: with both ends on such a CPU, a first push (53 MB) cost ssh and sshd
0.08 CPU-s less and took 4-5% less wall time (docs/performance.md, item 18). Only the
order changes: the list is OpenSSH's default set with AES-GCM moved to the front; ssh takes
the first one the server allows. Only this machine's CPU is known here: for a server
without AES instructions, a ``Ciphers`` line for that host in ~/.ssh/config says otherwise.

Whoever chose a cipher is left alone: a ``-c`` or ``-o Ciphers=`` in the ssh command, a
``Ciphers`` line anywhere in the configuration ssh reads (the ``-F`` file, or
``~/.ssh/config`` and ``/etc/ssh/ssh_config``, with what they ``Include``), a program other
than OpenSSH's ``ssh``, or anything here that cannot be read for sure. An ssh that refuses
the option (built without OpenSSL, say) is run again without it (:func:`cipher_refused`,
pusher.py). Imported before SSH starts (entry.py): it uses ``os`` only, and reads a few
small files.
"""

from __future__ import annotations

import os
import stat

#: OpenSSH's default cipher set (ssh_config(5), 6.9 and later), AES-GCM first.
PREFERRED = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
             "aes128-ctr,aes192-ctr,aes256-ctr")

_WITH_VALUE = frozenset("BbcDEeFIiJLlmOoPpQRSWw")  # ssh's options that take an argument (ssh(1))
_MAX_INCLUDE_DEPTH = 16  # as ssh's READCONF_MAX_DEPTH
_MAX_CONFIG = 1 << 20  # a configuration file larger than this is not read through here
#: what ssh prints when it refuses ``-c`` (ssh.c) or finds no cipher both sides allow (kex.c)
_REFUSALS = ("Unknown cipher type", "Bad SSH2 cipher spec", "no matching cipher found")


def cipher_refused(stderr_line: str) -> bool:
    """Whether ssh's last word says it would not take, or could not agree on, the cipher list."""
    return any(r in stderr_line for r in _REFUSALS)


def cipher_options(ssh: list[str], cpuinfo: str = "/proc/cpuinfo", home: str | None = None,
                   system_config: str = "/etc/ssh/ssh_config") -> list[str]:
    """``["-c", PREFERRED]`` to put after ``ssh``'s own arguments, or ``[]`` to leave it be."""
    if not ssh or os.path.basename(ssh[0]) != "ssh":
        return []
    options = _options(ssh[1:])
    if options is None or any(flag == "c" or (flag == "o" and _keyword(value) == "ciphers")
                              for flag, value in options):
        return []
    if not _cpu_has_aes(cpuinfo):
        return []
    home = home if home is not None else _home()
    user_dir = os.path.join(home, ".ssh")
    given = [value for flag, value in options if flag == "F"]
    if given:
        configs = [] if given[-1] == "none" else [(_expand(given[-1], home), user_dir)]
    else:
        configs = [(os.path.join(user_dir, "config"), user_dir),
                   (system_config, os.path.dirname(system_config))]
    for path, base in configs:
        if _may_choose_ciphers(path, base, home, 0):
            return []
    return ["-c", PREFERRED]


def _home() -> str:
    """The home directory ssh reads ~/.ssh/config from: the password database's, not $HOME."""
    import pwd  # built in: no file to import

    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def _options(args: list[str]) -> list[tuple[str, str]] | None:
    """ssh's options as getopt reads them: (letter, value); None where the words are not plain options."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return None  # a host or command in the ssh command itself: not ours to read
        for j in range(1, len(arg)):
            flag = arg[j]
            if flag in _WITH_VALUE:
                value = arg[j + 1:]
                if not value:
                    if i >= len(args):
                        return None
                    value = args[i]
                    i += 1
                out.append((flag, value))
                break
            out.append((flag, ""))
    return out


def _keyword(line: str) -> str:
    """The keyword of an ssh_config line (``Keyword value`` or ``Keyword=value``), lower-cased."""
    line = line.strip()
    end = 0
    while end < len(line) and not line[end].isspace() and line[end] != "=":
        end += 1
    return line[:end].lower()


def _cpu_has_aes(cpuinfo: str) -> bool:
    """AES and carry-less multiply, as the first CPU lists them (x86 ``flags``, Arm ``Features``)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() in ("flags", "Features"):
                    words = set(value.split())
                    return "aes" in words and bool(words & {"pclmulqdq", "pmull"})
    except OSError:
        pass
    return False


def _may_choose_ciphers(path: str, base: str, home: str, depth: int) -> bool:
    """Whether the configuration file at ``path`` (or a file it includes) might set Ciphers."""
    if depth > _MAX_INCLUDE_DEPTH:
        return True
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_CONFIG:
            return path != os.devnull  # a FIFO, a device, a huge file: not read through here
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(_MAX_CONFIG)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but unreadable to us: ssh may read it
    for line in text.splitlines():
        if line.lstrip().startswith('"'):
            return True  # a quoted keyword: ssh takes it, _keyword does not read it
        keyword = _keyword(line)
        if keyword == "ciphers":
            return True
        if keyword == "include":
            patterns = line.strip()[len(keyword):].lstrip(" \t=").split()
            for pattern in patterns:
                files = _included(_expand(pattern, home), base)
                if files is None or any(_may_choose_ciphers(p, base, home, depth + 1) for p in files):
                    return True
    return False


def _expand(path: str, home: str) -> str:
    return home + path[1:] if path == "~" or path.startswith("~/") else path


def _included(pattern: str, base: str) -> list[str] | None:
    """The files an Include pattern names (``*`` and ``?`` in the last part); None if unsure."""
    if any(c in pattern for c in "[]{}%$\"'\\") or pattern.startswith("~"):
        return None  # (a ~ left by _expand is ~user: another home)
    pattern = os.path.join(base, pattern)  # relative: to ~/.ssh or /etc/ssh, as ssh has it
    directory, name = os.path.split(pattern)
    if any(c in directory for c in "*?"):
        return None
    if not any(c in name for c in "*?"):
        return [pattern]
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError:
        return None
    return [os.path.join(directory, n) for n in sorted(names) if _matches(name, n)]


def _matches(pattern: str, name: str) -> bool:
    """glob(3) matching of one name with ``*`` and ``?`` (a leading dot is matched only by a dot)."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, n
            p += 1
        elif p < len(pattern) and pattern[p] in ("?", name[n]):
            p += 1
            n += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)
