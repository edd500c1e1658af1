"""A BuildStream project for the tests, written to a temp dir for BuildStream 1.x or 2.x.

It has what makes provenance hard to get right by reading the .bst files:

- git sources from local repositories (``file://`` URLs) behind an alias, and that alias
  is defined in an *include file* (``(@)`` in project.conf), not in project.conf itself;
- a ref in ``git describe`` form (``v1.0-1-g<sha>``);
- a project option (``flavour``) and a ``(?)`` conditional that adds a dependency;
- a junction (itself a git source) to a second project with its own alias, whose element
  is a git source too, its ref in the subproject's ``project.refs``;
- ``import`` and ``compose`` elements (no sandbox needed), and a ``local`` source;
- ``odd.bst``, whose source plugin (``opaque``, local to the project) reports no URL, no
  ref and (2.x) no source information, and ``lonely.bst``, which the tests never build.

Every git commit is made with fixed dates and names, so the project is the same each time.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fixture", "GIT_AUTHOR_EMAIL": "fixture@example.org",
    "GIT_COMMITTER_NAME": "Fixture", "GIT_COMMITTER_EMAIL": "fixture@example.org",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
}


def git(repo: Path, *args: str, date: int = 1_700_000_000) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": f"{date} +0000", "GIT_COMMITTER_DATE": f"{date} +0000"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def git_repo(path: Path, files: dict[str, str]) -> str:
    """A repository with one commit holding ``files``; returns the commit sha."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return git_commit(path, files, "initial")


def git_commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        f = repo / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(repo, "add", "-A")
    has_head = subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", "HEAD"],
                              capture_output=True, check=False).returncode == 0
    count = int(git(repo, "rev-list", "--count", "HEAD")) if has_head else 0
    git(repo, "commit", "-q", "-m", message, date=1_700_000_000 + 3600 * count)
    return git(repo, "rev-parse", "HEAD")


def describe(repo: Path, commit: str) -> str:
    """The ref as BuildStream's tracking writes it with ``ref-format: git-describe``."""
    return git(repo, "describe", "--tags", "--abbrev=40", "--long", commit)


@dataclass
class BstProject:
    major: int
    root: Path                  # holds repos/ and project/
    project: Path
    repos: Path
    commits: dict[str, str] = field(default_factory=dict)   # repo name -> commit the project uses
    refs: dict[str, str] = field(default_factory=dict)      # repo name -> ref as written in the project

    def url(self, repo: str) -> str:
        return (self.repos / repo).as_uri()

    def move_greet(self) -> str:
        """One more commit on the greet repository, and point greet.bst at it (describe form)."""
        repo = self.repos / "greet"
        old = self.refs["greet"]
        new_commit = git_commit(repo, {"usr/share/greet/hello.txt": "hello, world (second edition)\n"}, "second")
        new_ref = describe(repo, new_commit)
        element = self.project / "elements" / "greet.bst"
        element.write_text(element.read_text().replace(old, new_ref))
        self.commits["greet"], self.refs["greet"] = new_commit, new_ref
        return new_commit


def make(root: Path, major: int) -> BstProject:
    """Write the repositories and the project for BuildStream ``major`` (1 or 2) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    repos = root / "repos"
    proj = BstProject(major, root, root / "project", repos)

    # git repositories: greet (tagged, then one commit past the tag), data, and the subproject
    greet = repos / "greet"
    git_repo(greet, {"usr/share/greet/hello.txt": "hello, world\n"})
    git(greet, "tag", "-a", "-m", "v1.0", "v1.0")
    greet_commit = git_commit(greet, {"usr/share/greet/README": "greetings\n"}, "readme")
    proj.commits["greet"], proj.refs["greet"] = greet_commit, describe(greet, greet_commit)

    data_commit = git_repo(repos / "data", {"usr/share/data/numbers.txt": "1 2 3\n"})
    proj.commits["data"] = proj.refs["data"] = data_commit

    sub_files = {
        "project.conf": _project_conf(major, "subproject", refs_in_file=True)
        + "aliases:\n  upstream: " + repos.as_uri() + "/\n",
        "project.refs": "projects:\n  subproject:\n    data.bst:\n    - ref: " + data_commit + "\n",
        "elements/data.bst": ("kind: import\nconfig:\n  source: usr\n  target: usr\n"
                              "sources:\n- kind: git\n  url: upstream:data\n  track: main\n"),
    }
    sub_commit = git_repo(repos / "subproject", sub_files)
    proj.commits["subproject"] = proj.refs["subproject"] = sub_commit

    # the main project
    p = proj.project
    files = {
        "project.conf": _project_conf(major, "fixture", local_plugins=True) + (
            "(@): include/common.yml\n"
            "options:\n"
            "  flavour:\n"
            "    type: enum\n"
            "    description: Which flavour to build\n"
            "    values: [plain, fancy]\n"
            "    default: plain\n"
            "    variable: flavour\n"),
        "include/common.yml": "aliases:\n  repos: " + repos.as_uri() + "/\n",
        "files/base/etc/os-release": "NAME=Fixture\n",
        "files/base/usr/bin/hello": "#!/bin/sh\necho hello\n",
        "files/extra/usr/share/extra.txt": "fancy\n",
        "elements/base.bst": "kind: import\nsources:\n- kind: local\n  path: files/base\n",
        "elements/extra.bst": "kind: import\nsources:\n- kind: local\n  path: files/extra\n",
        "elements/greet.bst": (
            "kind: import\n"
            "config:\n  source: usr\n  target: usr\n"  # the files, not the .git/ the git source stages
            "depends:\n- base.bst\n"
            "sources:\n- kind: git\n  url: repos:greet\n  track: main\n  ref-format: git-describe\n"
            f"  ref: {proj.refs['greet']}\n"),
        "elements/sub.bst": (
            "kind: junction\n"
            f"sources:\n- kind: git\n  url: repos:subproject\n  ref: {sub_commit}\n"),
        "plugins/opaque.py": OPAQUE_PLUGIN[major],
        "elements/odd.bst": "kind: import\nsources:\n- kind: opaque\n  text: opaque content\n",
        "elements/lonely.bst": "kind: import\nsources:\n- kind: local\n  path: files/extra\n",
        "elements/system.bst": (
            "kind: compose\n"
            "build-depends:\n- base.bst\n- greet.bst\n- filename: data.bst\n  junction: sub.bst\n"
            "(?):\n- flavour == \"fancy\":\n    build-depends:\n      (>):\n      - extra.bst\n"),
    }
    for name, text in files.items():
        f = p / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (p / "files/base/usr/bin/hello").chmod(0o755)
    return proj


def _project_conf(major: int, name: str, refs_in_file: bool = False, local_plugins: bool = False) -> str:
    text = f"name: {name}\nelement-path: elements\n"
    if refs_in_file:
        text += "ref-storage: project.refs\n"
    if major >= 2:
        text += ("min-version: 2.0\n"
                 "plugins:\n- origin: pip\n  package-name: buildstream-plugins\n  sources:\n  - git\n")
        if local_plugins:
            text += "- origin: local\n  path: plugins\n  sources:\n  - opaque\n"
    elif local_plugins:
        text += "plugins:\n- origin: local\n  path: plugins\n  sources:\n    opaque: 0\n"
    return text


# A source plugin that says nothing about where its content comes from.
OPAQUE_PLUGIN = {
    1: '''import os
from buildstream import Consistency, Source


class OpaqueSource(Source):
    def configure(self, node):
        self.node_validate(node, ["text"] + Source.COMMON_CONFIG_KEYS)
        self.text = self.node_get_member(node, str, "text")

    def preflight(self):
        pass

    def get_unique_key(self):
        return self.text

    def get_consistency(self):
        return Consistency.CACHED

    def load_ref(self, node):
        pass

    def get_ref(self):
        return None

    def set_ref(self, ref, node):
        pass

    def fetch(self):
        pass

    def stage(self, directory):
        with open(os.path.join(directory, "opaque.txt"), "w") as f:
            f.write(self.text)


def setup():
    return OpaqueSource
''',
    2: '''import os
from buildstream import Source


class OpaqueSource(Source):
    BST_MIN_VERSION = "2.0"

    def configure(self, node):
        node.validate_keys(["text", *Source.COMMON_CONFIG_KEYS])
        self.text = node.get_str("text")

    def preflight(self):
        pass

    def get_unique_key(self):
        return self.text

    def is_resolved(self):
        return True

    def is_cached(self):
        return True

    def load_ref(self, node):
        pass

    def get_ref(self):
        return None

    def set_ref(self, ref, node):
        pass

    def fetch(self):
        pass

    def stage(self, directory):
        with open(os.path.join(directory, "opaque.txt"), "w") as f:
            f.write(self.text)


def setup():
    return OpaqueSource
''',
}


# ---------------------------------------------------------------------------------------
# Running BuildStream for the tests: its caches and config in temp dirs, never the machine's.

REPO_ROOT = Path(__file__).resolve().parent.parent
BST2_VENV = REPO_ROOT / ".cache" / "bst2-venv"
BST2_REQUIREMENTS = ("buildstream>=2.5,<3", "buildstream-plugins>=2.5")


@dataclass
class BuiltProject:
    """A fixture project built with one bst; ``env`` points bst's caches at temp dirs."""

    proj: BstProject
    bst: str
    version: str
    env: dict[str, str]

    @property
    def major(self) -> int:
        return self.proj.major

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([self.bst, "--no-colors", "--directory", str(self.proj.project), *args],
                           env={**os.environ, **self.env}, capture_output=True, text=True, timeout=600, check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"bst {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p

    def full_keys(self, *targets: str, options: tuple[str, ...] = ()) -> dict[str, str]:
        """``bst show --format '%{name} %{full-key}'``: what treeship's cache keys must equal."""
        out = self.run(*options, "show", "--deps", "all", "--format", "%{name} %{full-key}", *targets).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def checkout(self, element: str, dest: Path, options: tuple[str, ...] = ()) -> Path:
        if self.major == 1:
            self.run(*options, "checkout", element, str(dest))
        else:
            self.run(*options, "artifact", "checkout", element, "--directory", str(dest))
        return dest


def bst_env(root: Path) -> dict[str, str]:
    (root / "cache").mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(parents=True, exist_ok=True)
    return {"XDG_CACHE_HOME": str(root / "cache"), "XDG_CONFIG_HOME": str(root / "config")}


def bst_version(bst: str) -> str:
    return subprocess.run([bst, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def build_project(root: Path, major: int, bst: str, *targets: str) -> BuiltProject:
    """Write the fixture project for ``major`` under ``root`` and build ``targets`` with ``bst``."""
    built = BuiltProject(make(root / "work", major), bst, bst_version(bst), bst_env(root))
    if targets:
        built.run("build", *targets)
    return built


def ensure_bst2(venv: Path = BST2_VENV) -> str:
    """BuildStream 2 from PyPI in its own venv (made once, kept under .cache/); its bst's path.

    Raises RuntimeError (the tests skip on it) when PyPI is unreachable.
    """
    import fcntl
    import sys

    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = venv / ".treeship-requirements"
    wanted = "\n".join(BST2_REQUIREMENTS)
    with open(venv.parent / "bst2-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "bin" / "bst").exists() and stamp.exists() and stamp.read_text() == wanted:
            return str(venv / "bin" / "bst")
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
        p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                            *BST2_REQUIREMENTS], capture_output=True, text=True, timeout=900, check=False)
        if p.returncode != 0:
            last = [line for line in p.stderr.splitlines() if line.strip() and not line.startswith("WARNING: Loc")]
            why = last[-1] if last else f"exit {p.returncode}"
            raise RuntimeError(f"pip install {' '.join(BST2_REQUIREMENTS)} failed: {why}")
        stamp.write_text(wanted)
        return str(venv / "bin" / "bst")
