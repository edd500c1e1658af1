"""The command line: parse, call, print. Human output by default, ``--json`` for machines.

Every :class:`~treeship.errors.TreeshipError` becomes one line on stderr and its exit
code (the table is in :mod:`treeship.errors` and docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import __version__
from .errors import (
    EXIT_CODES,
    ProvenanceError,
    TreeshipError,
    UsageError,
    VerificationError,
    failure_message,
    output_failed,
    report,
    say,
)

DEFAULT_REPO = "./releases"

repo_option = click.option(
    "--repo", "repo_path", envvar="TREESHIP_REPO", default=DEFAULT_REPO, show_default=True,
    show_envvar=True, type=click.Path(readable=False, path_type=str),  # Repo.open checks it: exit 5
    help="The releases repository (an OSTree repo).")


class _Json:
    """Whether this command was asked for --json, and whether it printed its object: a
    failure then prints one too (main), so that a machine reading stdout always gets JSON."""

    asked = False
    printed = False


def _json_asked(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    _Json.asked = _Json.asked or value
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_asked, is_eager=True,
                           help="Print one JSON object for machines (on failure too: ok false, the error, "
                                "its exit code).")


MAX_TIMEOUT = 10_000_000.0  # seconds (~4 months): beyond, select() and the clock overflow


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A FloatRange takes nan (every comparison with it is false: a timeout of nan never
    fires); a timeout of inf or 1e300 overflowed the receiver's clock."""
    if value is not None and not (math.isfinite(value) and value <= MAX_TIMEOUT):
        raise click.BadParameter(f"a number of seconds from 1 to {MAX_TIMEOUT:.0f}")
    return value


def trust_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--gpg-homedir / --gpg-keyring / --ed25519-pubkey: the keys a verification trusts."""
    f = click.option("--ed25519-pubkey", "ed25519_keys", multiple=True, metavar="KEY_OR_FILE",
                     help="Trust this ed25519 public key (base64, or a file of them; repeatable).")(f)
    f = click.option("--gpg-keyring", type=click.Path(dir_okay=False, path_type=str),
                     help="Trust the keys of this GPG keyring file.")(f)
    return click.option("--gpg-homedir", type=click.Path(file_okay=False, path_type=str),
                        help="Trust the public keys of this GnuPG home.")(f)


def _emit_json(obj: Any) -> None:
    _Json.printed = True
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def _warn(text: str) -> None:
    """A warning on stderr; a stderr that cannot take it must not turn a success into a failure."""
    say(f"treeship: warning: {text}")


def _writing_output(e: BaseException) -> bool:
    """Whether ``e`` is stdout refusing what was printed (a full disk, ``> /dev/full``, an I/O
    error): an OSError raised inside click.echo writing to stdout, through which everything a
    command prints there goes (its help and version too). A closed pipe is not: a reader that
    has stopped (see main)."""
    if not isinstance(e, OSError) or isinstance(e, BrokenPipeError):
        return False
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is click.echo.__code__:
            where = tb.tb_frame.f_locals
            return not where.get("err") and _fd(where.get("file")) == 1
        tb = tb.tb_next
    return False


def _fd(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def _json_failure(code: int, message: str) -> None:
    """With --json, a failure's JSON object on stdout, unless the command printed one (a
    rejected push prints its result); the one line on stderr says it for people."""
    if not _Json.asked or _Json.printed:
        return
    try:
        _emit_json({"ok": False, "error": {"message": message, "exit_code": code}})
    except (OSError, ValueError):  # stdout is gone: the exit code says it
        pass


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """Files and bytes stored so far, on a terminal only (stderr), quiet when piped."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    lock = threading.Lock()
    counts = [0, 0]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("storing files", detail="")

        def advance(files: int, nbytes: int) -> None:
            with lock:
                counts[0] += files
                counts[1] += nbytes
                detail = f"{counts[0]} files, {_human_bytes(counts[1])}"
            bar.update(task, detail=detail)

        yield advance


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order of the data flow, not alphabetical


EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                          "max_content_width": 100})
@click.version_option(__version__, prog_name="treeship")
def cli() -> None:
    """Release build outputs as signed OSTree commits that carry their provenance.

    \b
    Typical use:
      treeship release ./sysroot --branch stage3-sysroot/x86_64 --version 2026.11 \\
          --provenance provenance.json --gpg-sign KEYID --sign-ed25519 release.secret
      treeship release --bst bootstrap/stage3-sysroot.bst --branch stage3-sysroot/x86_64 \\
          --version 2026.11 --gpg-sign KEYID      # a built BuildStream element, its provenance recorded
      treeship log stage3-sysroot/x86_64
      treeship show stage3-sysroot/x86_64 --provenance --format yaml
      treeship verify stage3-sysroot/x86_64 --ed25519-pubkey release.pub
      treeship diff stage3-sysroot/x86_64^ stage3-sysroot/x86_64
      treeship attest stage3-sysroot/x86_64 --sign-ed25519 release.secret -o release.intoto.jsonl

    The repository is ./releases unless --repo or $TREESHIP_REPO says otherwise.
    """


@cli.command()
@repo_option
@click.option("--mode", type=click.Choice(["archive", "bare-user"]), default="archive", show_default=True,
              help="archive serves over HTTP; bare-user suits local checkouts.")
@click.option("--collection-id", help="Collection ID (reverse DNS, e.g. org.example.Releases).")
@json_option
def init(repo_path: str, mode: str, collection_id: str | None, as_json: bool) -> None:
    """Create a releases repository (nothing happens if one is already there)."""
    from .repo import Repo

    if Repo.is_repo(repo_path):
        repo = Repo.open(repo_path)
        if repo.mode != mode:
            raise UsageError(f"{repo_path}: already a repository in {repo.mode} mode, not {mode}")
        if collection_id is not None and repo.collection_id != collection_id:
            raise UsageError(f"{repo_path}: already a repository with collection ID "
                             f"{repo.collection_id or '(none)'}, not {collection_id}")
        created = False
    else:
        repo = Repo.create(repo_path, mode, collection_id)
        created = True
    if as_json:
        _emit_json({"repo": str(repo.path), "mode": repo.mode, "collection_id": repo.collection_id,
                    "created": created})
    else:
        verb = "Created" if created else "Already there:"
        click.echo(f"{verb} {repo.mode} repository {repo.path}")


@cli.command()
@click.argument("source", required=False, type=click.Path(readable=False, path_type=str))  # checked: exit 3
@click.option("--branch", "-b", required=True, help="Branch to release on, e.g. stage3-sysroot/x86_64.")
@repo_option
@click.option("--version", "version", help="Release version (metadata 'version'). Default: UTC timestamp.")
@click.option("--provenance", "provenance_file", type=click.Path(readable=False, path_type=str),
              help="Provenance manifest (JSON or YAML, schema treeship.provenance/v1).")
@click.option("--subject", help="Commit subject. Default: 'BRANCH VERSION'.")
@click.option("--body", default="", help="Commit body text.")
@click.option("--gpg-sign", "gpg_keys", multiple=True, metavar="KEYID", help="Sign with this GPG key (repeatable).")
@click.option("--gpg-homedir", type=click.Path(file_okay=False, path_type=str), help="GnuPG home for --gpg-sign.")
@click.option("--sign-ed25519", "ed25519_files", multiple=True, metavar="SECRET_FILE",
              type=click.Path(readable=False, path_type=str),
              help="Sign with this ed25519 secret key file, ostree sign format (repeatable).")
@click.option("--manifest-path", metavar="PATH_IN_TREE",
              help="Also write the provenance JSON into the released tree at this path.")
@click.option("--keep-ownership", is_flag=True,
              help="Keep file owners, modes and xattrs instead of root-owned canonical permissions.")
@click.option("--allow-unchanged", is_flag=True, help="Release even if the tree equals the branch head.")
@click.option("--bst", "bst_element", metavar="ELEMENT",
              help="Release this BuildStream element instead of SOURCE: treeship checks it out (it must be "
                   "built) and records the provenance of its whole pipeline.")
@click.option("--bst-project", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="The BuildStream project directory (bst -C). Default: bst's own, the current directory.")
@click.option("--bst-option", "bst_options", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="A project option, as bst -o NAME VALUE (repeatable).")
@click.option("--bst-command", metavar="PATH", envvar="TREESHIP_BST", show_envvar=True,
              help="The bst executable. Default: bst on PATH. Its version picks the 1.6 or 2.x way.")
@json_option
def release(source: str | None, branch: str, repo_path: str, version: str | None, provenance_file: str | None,
            subject: str | None, body: str, gpg_keys: tuple[str, ...], gpg_homedir: str | None,
            ed25519_files: tuple[str, ...], manifest_path: str | None, keep_ownership: bool,
            allow_unchanged: bool, bst_element: str | None, bst_project: str | None,
            bst_options: tuple[tuple[str, str], ...], bst_command: str | None, as_json: bool) -> None:
    """Release SOURCE (a directory or .tar/.tar.gz/.tar.xz/.tar.zst) on a branch,
    or a built BuildStream element with --bst ELEMENT.

    The commit's parent is the branch head; its metadata carries the version, the
    ostree.ref-binding, and the provenance, so every signature covers them. The branch
    moves only after the commit and all its signatures are written. The repository is
    created (archive mode) if missing.

    With --bst, treeship runs the checkout itself (bst checkout on BuildStream 1.6,
    bst artifact checkout on 2.5+) into a private temp dir, and records for every element
    of the pipeline its cache key, kind, sources (real URL, ref, commit) and dependencies.
    """
    from . import provenance
    from .release import ReleaseOptions
    from .release import release as do_release

    bst_request = None
    if bst_element is not None:
        from .provenance.buildstream import BstRequest

        if source is not None:
            raise UsageError("give SOURCE or --bst ELEMENT, not both")
        if provenance_file:
            raise UsageError("--provenance cannot be used with --bst: treeship records the BuildStream provenance "
                             "itself")
        bst_request = BstRequest(bst_element, bst_project, tuple(bst_options), bst_command)
    else:
        if bst_project or bst_options or bst_command:
            raise UsageError("--bst-project, --bst-option and --bst-command need --bst ELEMENT")
        if source is None:
            raise UsageError("missing SOURCE: a directory or a tar archive to release (or --bst ELEMENT)")
        if manifest_path and not provenance_file:
            raise UsageError("--manifest-path needs --provenance (or --bst)")
    manifest = provenance.load_file(provenance_file) if provenance_file else None
    opts = ReleaseOptions(
        source=source, branch=branch, repo=repo_path, version=version, manifest=manifest, subject=subject,
        body=body, gpg_keys=list(gpg_keys), gpg_homedir=gpg_homedir, ed25519_secret_files=list(ed25519_files),
        manifest_path=manifest_path, keep_ownership=keep_ownership, allow_unchanged=allow_unchanged,
        bst=bst_request)
    with _progress(not as_json) as progress:
        result = do_release(opts, progress)
    for warning in result.warnings:
        _warn(warning)
    if as_json:
        _emit_json(result.to_dict())
        return
    click.echo(f"Released {result.branch} {result.version} as {result.commit}")
    click.echo(f"  parent:     {result.parent or '(none: first release on this branch)'}")
    click.echo(f"  tree:       {result.files} files, {_human_bytes(result.bytes)} in {result.seconds:.1f} s")
    if manifest or bst_request:
        click.echo(f"  provenance: {result.elements} elements")
    sigs = ", ".join(f"{s['type']} {s['key']}" for s in result.signatures) or "unsigned"
    click.echo(f"  signed:     {sigs}")


@cli.command()
@click.argument("branch")
@repo_option
@click.option("-n", "--max-count", type=click.IntRange(min=1), help="Show at most this many releases.")
@json_option
def log(branch: str, repo_path: str, max_count: int | None, as_json: bool) -> None:
    """The releases on BRANCH, newest first."""
    from . import history
    from .repo import Repo

    records = history.log(Repo.open(repo_path), branch, max_count)
    if as_json:
        _emit_json({"branch": branch, "releases": [r.to_dict() for r in records]})
        return
    click.echo(f"{'COMMIT':<12}  {'VERSION':<18} {'DATE':<20} {'SIGNED':<12} SUBJECT")
    for r in records:
        kinds = ["gpg" if r.gpg_signatures else "", "ed25519" if r.ed25519_signatures else ""]
        signed = "+".join(k for k in kinds if k) or "no"
        click.echo(f"{r.commit[:12]}  {str(r.version or '-'):<18} {r.date:<20} {signed:<12} {r.subject}")


@cli.command()
@click.argument("ref")
@repo_option
@click.option("--provenance", "only_provenance", is_flag=True, help="Print only the provenance manifest.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "yaml", "spdx"]), default="text",
              show_default=True, help="spdx: the provenance as an SPDX 2.3 JSON SBOM (implies --provenance).")
def show(ref: str, repo_path: str, only_provenance: bool, fmt: str) -> None:
    """One release (REF: a branch, BRANCH^, or a commit checksum)."""
    from . import history, provenance
    from .repo import Repo

    repo = Repo.open(repo_path)
    if fmt == "spdx":
        _emit_json(history.spdx_document(repo, ref))
        return
    if only_provenance:
        data = history.provenance(repo, ref)
        if data is None:
            raise ProvenanceError(f"{ref}: this release carries no provenance manifest")
        out = {"json": provenance.dumps_json, "yaml": provenance.dumps_yaml, "text": provenance.render_text}[fmt](data)
        click.echo(out, nl=False)
        return
    rec = history.record(repo, repo.require(ref))
    if fmt == "json":
        _emit_json(rec.to_dict())
        return
    if fmt == "yaml":
        click.echo(provenance.dumps_yaml(rec.to_dict()), nl=False)
        return
    click.echo(f"commit   {rec.commit}")
    click.echo(f"version  {rec.version or '-'}")
    click.echo(f"date     {rec.date}")
    click.echo(f"branch   {', '.join(rec.ref_binding) or '-'} (ostree.ref-binding)")
    click.echo(f"parent   {rec.parent or '-'}")
    click.echo(f"signed   {rec.gpg_signatures} GPG, {rec.ed25519_signatures} ed25519")
    prov = rec.metadata.get("treeship.provenance")
    if prov is not None:
        n = len(provenance.parse_stored(prov, ref).get("elements", []))
        click.echo(f"provenance {n} elements (treeship show {ref} --provenance)")
    click.echo("")
    click.echo(f"    {rec.subject}")
    if rec.body:
        click.echo("")
        for line in rec.body.splitlines():
            click.echo(f"    {line}")


@cli.command()
@click.argument("ref")
@repo_option
@trust_options
@json_option
def verify(ref: str, repo_path: str, gpg_homedir: str | None, gpg_keyring: str | None,
           ed25519_keys: tuple[str, ...], as_json: bool) -> None:
    """Check REF's signatures: exit 0 only if one is good and none is bad.

    A signature by a key you did not give is reported but neither good nor bad.
    """
    from . import signing
    from .repo import Repo

    if gpg_homedir and gpg_keyring:
        raise UsageError("give --gpg-homedir or --gpg-keyring, not both")
    if not (gpg_homedir or gpg_keyring or ed25519_keys):
        raise UsageError("nothing to trust: give --gpg-homedir, --gpg-keyring or --ed25519-pubkey")
    pubkeys = [k for spec in ed25519_keys for k in signing.load_ed25519_public(spec)]
    repo = Repo.open(repo_path)
    checksum = repo.require(ref)
    result = signing.verify(repo, checksum, gpg_homedir=gpg_homedir, gpg_keyring=gpg_keyring,
                            ed25519_keys=pubkeys)
    if as_json:
        _emit_json({"ref": ref, "commit": checksum, "ok": result.ok,
                    "signatures": [s.to_dict() for s in result.signatures]})
    else:
        click.echo(f"commit {checksum}")
        if not result.signatures:
            click.echo("  no signatures")
        for s in result.signatures:
            who = f"{s.signer} ({s.key})" if s.signer else s.key or "?"
            label = {"good": "Good", "bad": "BAD", "unknown-key": "Unverified"}[s.status]
            detail = f": {s.detail}" if s.detail else ""
            click.echo(f"  {label} {s.type} signature by {who}{detail}")
    if not result.ok:
        if result.bad:
            raise VerificationError(f"{ref}: {len(result.bad)} bad signature(s)")
        raise VerificationError(f"{ref}: no signature by a trusted key")


@cli.command()
@click.argument("old_ref", metavar="A")
@click.argument("new_ref", metavar="B")
@repo_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def diff(old_ref: str, new_ref: str, repo_path: str, fmt: str) -> None:
    """What changed from release A to release B, as release notes.

    Elements added, removed and changed (per source: old → new commit or ref; old → new
    cache key; kind) from the two provenance manifests, and files added, removed and
    modified from the two trees. A and B: a branch, BRANCH^, or a commit checksum.
    """
    from . import diff as release_diff
    from .repo import Repo

    result = release_diff.diff_releases(Repo.open(repo_path), old_ref, new_ref)
    if fmt == "json":
        _emit_json(result.to_dict())
    else:
        click.echo(release_diff.render_text(result), nl=False)


@cli.command()
@click.argument("ref")
@repo_option
@click.option("--sign-ed25519", "ed25519_files", multiple=True, metavar="SECRET_FILE",
              type=click.Path(readable=False, path_type=str),
              help="Sign with this ed25519 secret key file, ostree sign format (repeatable).")
@click.option("--gpg-sign", "gpg_keys", multiple=True, metavar="KEYID", help="Sign with this GPG key (repeatable).")
@click.option("--gpg-homedir", type=click.Path(file_okay=False, path_type=str), help="GnuPG home for --gpg-sign.")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Where to write the envelope, e.g. release.intoto.jsonl ('-': stdout).")
@click.option("--builder-id", metavar="URI", help="runDetails.builder.id (default urn:treeship:builder:TOOL).")
@json_option
def attest(ref: str, repo_path: str, ed25519_files: tuple[str, ...], gpg_keys: tuple[str, ...],
           gpg_homedir: str | None, output: str, builder_id: str | None, as_json: bool) -> None:
    """Write REF's provenance as a signed in-toto statement (SLSA provenance v1, DSSE envelope).

    The subject is the branch with digest {"sha256": COMMIT}: an OSTree commit checksum is
    the sha256 of the .commit object, which covers the tree and the provenance.
    """
    from . import attest as attestation
    from .repo import Repo

    if output == "-" and as_json:
        raise UsageError("-o - and --json would both write to stdout; give -o FILE")
    att = attestation.attest(Repo.open(repo_path), ref, ed25519_files=list(ed25519_files),
                             gpg_keys=list(gpg_keys), gpg_homedir=gpg_homedir, builder_id=builder_id)
    attestation.write(att, output)
    if as_json:
        _emit_json({"output": output, "subject": {"name": att.branch, "digest": {"sha256": att.commit}},
                    "predicateType": att.statement["predicateType"], "signatures": att.signed_by})
    elif output != "-":
        who = ", ".join(f"{s['type']} {s['keyid']}" for s in att.signed_by)
        click.echo(f"Wrote {output}: SLSA provenance v1 for {att.branch} = {att.commit}, signed by {who}")


@cli.command("verify-attestation")
@click.argument("file", type=click.Path(readable=False, path_type=str))
@repo_option
@click.option("--ref", help="The release the attestation must be about (default: each subject's branch head).")
@trust_options
@json_option
def verify_attestation(file: str, repo_path: str, ref: str | None, gpg_homedir: str | None,
                       gpg_keyring: str | None, ed25519_keys: tuple[str, ...], as_json: bool) -> None:
    """Check an attestation: a DSSE signature by a given key, about the right commit.

    Each subject's sha256 digest must be the commit --ref names or, without --ref, the
    current head of the branch the subject names (an older release's attestation needs
    --ref naming that release).
    """
    from . import attest as attestation
    from . import signing
    from .repo import Repo

    if gpg_homedir and gpg_keyring:
        raise UsageError("give --gpg-homedir or --gpg-keyring, not both")
    if not (gpg_homedir or gpg_keyring or ed25519_keys):
        raise UsageError("nothing to trust: give --ed25519-pubkey, --gpg-homedir or --gpg-keyring")
    pubkeys = [k for spec in ed25519_keys for k in signing.load_ed25519_public(spec)]
    checks = attestation.verify(Repo.open(repo_path), file, ed25519_keys=pubkeys, gpg_homedir=gpg_homedir,
                                gpg_keyring=gpg_keyring, ref=ref)
    if as_json:
        _emit_json({"file": file, "ok": all(c.ok for c in checks), "envelopes": [c.to_dict() for c in checks]})
    else:
        for c in checks:
            click.echo(f"{file}:{c.line}: {'OK' if c.ok else 'FAILED'}"
                       + (f" ({c.predicate_type})" if c.predicate_type else ""))
            for s in c.signatures:
                label = {"good": "Good", "bad": "BAD", "unknown-key": "Unverified"}[s.status]
                who = f"{s.signer} ({s.key})" if s.signer else s.key or "an unknown key"
                detail = f": {s.detail}" if s.detail else ""
                click.echo(f"  {label} {s.type} signature by {who}{detail}")
            for sub in c.subjects:
                click.echo(f"  subject {sub.name} sha256:{sub.digest[:12]} {sub.detail}")
    failed = [c for c in checks if not c.ok]
    if failed:
        c = failed[0]
        reason = c.problem or next(s.detail for s in c.subjects if not s.ok)
        raise VerificationError(f"{file}:{c.line}: {reason}")


@cli.group()
def remote() -> None:
    """Manage remotes (stored in the local repo's config, as `ostree remote add` does)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@repo_option
def remote_add(name: str, url: str, repo_path: str) -> None:
    """Add remote NAME at URL: ssh://[user@]host[:port]/path, file:///path or a path.

    A relative path is stored as an absolute one: a push finds the same place from any
    directory."""
    import os

    from .repo import Repo
    from .transfer.transport import parse_url

    if parse_url(url).kind == "local" and not url.startswith("file://"):
        url = os.path.abspath(url)
    repo = Repo.open(repo_path)  # a typo in --repo makes no new repository
    if name in repo.remotes():
        raise UsageError(f"remote {name!r} exists already, at {repo.remotes()[name]}")
    repo.remote_add(name, url)
    click.echo(f"Added remote {name} → {url}")


@remote.command("list")
@repo_option
@json_option
def remote_list(repo_path: str, as_json: bool) -> None:
    """List remotes and their URLs."""
    from .repo import Repo

    remotes = Repo.open(repo_path).remotes()
    if as_json:
        _emit_json({"remotes": remotes})
        return
    for name, url in remotes.items():
        click.echo(f"{name}\t{url}")


@contextmanager
def _push_progress(enabled: bool) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """Objects, bytes and rate while pushing, on a terminal only."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("pushing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TextColumn("{task.fields[objects]}"), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("push", total=None, objects="")

        def advance(objs: int, nbytes: int, total_objs: int, total_bytes: int) -> None:
            bar.update(task, completed=nbytes, total=total_bytes or None, objects=f"{objs}/{total_objs} objects")

        yield advance


@cli.command()
@click.argument("remote_name", metavar="REMOTE")
@click.argument("branches", nargs=-1, required=True)
@repo_option
@click.option("--force", is_flag=True, help="Allow a non-fast-forward update where the receiver's policy does.")
@click.option("--ssh-command", envvar="TREESHIP_SSH", show_envvar=True,
              help="SSH command and options, e.g. 'ssh -i key -o IdentitiesOnly=yes'. Unless it or "
                   "your ssh config picks a cipher (-c, Ciphers), AES-GCM is asked for first on a CPU "
                   "with AES instructions.")
@click.option("--receive-command", envvar="TREESHIP_RECEIVE", show_envvar=True,
              help="treeship on the server, if it is not on the remote PATH.")
@click.option("--delta", is_flag=True,
              help="Send a static delta from the receiver's head instead of objects (fewer bytes: for slow links).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True, callback=_finite,
              help="Give up when nothing has moved either way for this many seconds (a hung server, a dead link).")
@json_option
def push(remote_name: str, branches: tuple[str, ...], repo_path: str, force: bool, ssh_command: str | None,
         receive_command: str | None, delta: bool, timeout: float, as_json: bool) -> None:
    """Push BRANCHES to REMOTE: only missing objects, in one stream; refs move atomically.

    REMOTE is a remote name (see `treeship remote add`), an ssh:// URL, a file:// URL or
    a path. Over SSH the server runs `treeship receive`; a path runs it locally, same code.
    One line per ref: ok, up to date, or rejected with the reason.
    """
    from .errors import PushRejected
    from .transfer.pusher import PushResult
    from .transfer.pusher import push as do_push

    try:
        with _push_progress(not as_json) as progress:
            result = do_push(repo_path, remote_name, list(branches), force=force, ssh_command=ssh_command,
                             receive_command=receive_command, progress=progress, delta=delta, timeout=timeout)
    except PushRejected as e:
        if isinstance(e.result, PushResult):
            _print_push(e.result, as_json)
        raise
    _print_push(result, as_json)


def _print_push(result: Any, as_json: bool) -> None:
    if as_json:
        _emit_json(result.to_dict())
        return
    from .errors import printable  # reasons and warnings come from the receiver: they must not drive the terminal

    for r in result.refs:
        new = (r.new or "(delete)")[:12]
        if r.status == "ok":
            old = (r.old or "(new)")[:12]
            click.echo(f"ok        {r.ref}  {old} → {new}")
        elif r.status == "uptodate":
            click.echo(f"uptodate  {r.ref}  {new}")
        else:
            click.echo(f"rejected  {r.ref}  {new}: {printable(r.reason)}")
    deltas = f" and {len(result.deltas)} static delta{'s' if len(result.deltas) != 1 else ''}" if result.deltas else ""
    click.echo(f"{result.objects_sent} objects{deltas}, {_human_bytes(result.bytes_sent)} sent to "
               f"{printable(result.remote)} in {result.seconds:.1f} s")
    for message in result.messages:
        _warn(printable(message))
    if result.created:
        click.echo(f"created the repository {printable(result.created)}")


@cli.command()
@repo_option
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=str),
              help="Receive policy (TOML); see docs/server.md. Default: any branch, fast-forward only.")
@click.option("--key-id", help="Who is pushing (set per key in authorized_keys).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True, callback=_finite,
              help="Give up when the pusher sends nothing for this many seconds.")
@click.option("--create", is_flag=True, hidden=True, help="Create the repository if missing (local pushes).")
def receive(repo_path: str, config: str | None, key_id: str | None, timeout: float, create: bool) -> None:
    """The server end of `treeship push`, speaking on stdin/stdout (an SSH forced command).

    \b
    In ~/.ssh/authorized_keys on the server:
      restrict,command="treeship receive --repo /srv/releases
        --config /etc/treeship/receive.toml --key-id alice" ssh-ed25519 AAAA...
    (one line in the file; see docs/server.md)
    """
    from .transfer.receiver import serve

    serve(repo_path, config, key_id, timeout, create)


@cli.command()
@click.argument("prefix", type=click.Path(dir_okay=False, path_type=str))
@json_option
def keygen(prefix: str, as_json: bool) -> None:
    """Make an ed25519 key pair: PREFIX.secret and PREFIX.pub (ostree sign formats)."""
    from . import signing

    secret, public = signing.generate_ed25519(prefix)
    pub = public.read_text().strip()
    if as_json:
        _emit_json({"secret": str(secret), "public": str(public), "public_key": pub})
    else:
        click.echo(f"Wrote {secret} (keep it secret) and {public}")
        click.echo(f"Public key: {pub}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors into one line and an exit code."""
    stdout = sys.stdout
    try:
        cli.main(args=argv, prog_name="treeship", standalone_mode=False)
    except SystemExit as e:
        # click takes a closed stdout pipe (EPIPE) itself: it swaps the standard streams for
        # quiet ones and exits 1. A reader that stopped reading (`treeship log | head -1`) is
        # no failure of ours (errors.report says the same of a BrokenPipeError): 0.
        if e.code == 1 and sys.stdout is not stdout:
            sys.exit(0)
        raise
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        say("treeship: interrupted")
        _json_failure(130, "interrupted")
        sys.exit(130)
    except click.UsageError as e:  # one line, as every error (click's own takes three or four)
        if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # `treeship`: the help
            with contextlib.suppress(OSError):  # a stderr that cannot take it: the exit code says it
                e.show()
            sys.exit(e.exit_code)
        from .errors import printable

        where = e.ctx.command_path if e.ctx is not None else "treeship"
        say(f"treeship: error: {printable(e.format_message())} (see '{where} --help')")
        _json_failure(e.exit_code, e.format_message())
        sys.exit(e.exit_code)
    except click.ClickException as e:
        with contextlib.suppress(OSError):
            e.show()
        _json_failure(e.exit_code, e.format_message())
        sys.exit(e.exit_code)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _writing_output(e):
            # Printing a failure's own result (a rejected push's refs) keeps that failure.
            e = e.__context__ if isinstance(e.__context__, TreeshipError) else output_failed(e)  # (an OSError)
        code = report(e)
        _json_failure(code, failure_message(e))
        sys.exit(code)
    sys.exit(0)

