"""Runs under the interpreter of a BuildStream 1.6 ``bst`` (never imported by treeship).

BuildStream 1.x cannot print source URLs or refs (``bst show`` has no such format symbol),
so this script loads the project *through BuildStream itself*: it adds one command,
``treeship-provenance``, to bst's own command line and runs it, so the global options
(``--directory``, ``--option``, ``--config``), the user configuration, includes, ``(?)``
conditionals, ``project.refs``, aliases and junctions are all handled by the code that
``bst build`` uses. It writes one JSON document to the file named by ``--output``:

    {"buildstream_version", "project", "options", "target", "target_cached", "elements": [
       {"name", "kind", "cache_key", "cached", "build_depends", "runtime_depends",
        "sources": [{"kind", "url", "alias_url", "ref", "commit", "path", "warning"}]}]}

Elements come in bst's staging order (dependencies first), then the junction elements.
Exit status 64 means "not BuildStream 1.6"; anything else non-zero is bst's own failure,
described on stderr by bst.
"""

import json
import os
import re
import subprocess
import sys

# This file lies next to treeship's own buildstream.py: the directory Python puts first on
# sys.path for a script must not shadow BuildStream's package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SUPPORTED_SERIES = "1.6"
EXIT_UNSUPPORTED = 64

try:
    import buildstream
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.stderr.write(f"treeship: this interpreter cannot import buildstream ({e})\n")
    sys.exit(EXIT_UNSUPPORTED)

if not (buildstream.__version__ + ".").startswith(SUPPORTED_SERIES + "."):
    sys.stderr.write(f"treeship: BuildStream {buildstream.__version__} is not supported by this loader "
                     f"(it needs the {SUPPORTED_SERIES} series)\n")
    sys.exit(EXIT_UNSUPPORTED)

import click  # noqa: E402 - only once the version is known
from buildstream import Scope  # noqa: E402
from buildstream._frontend.cli import cli  # noqa: E402
from buildstream._pipeline import PipelineSelection  # noqa: E402

HEX_COMMIT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
DESCRIBE = re.compile(r"-g([0-9a-f]{40}|[0-9a-f]{64})$")


def option_values(project):
    """Every option the project declares, with the value this load resolved it to."""
    out = {}
    for name, option in sorted(project.options._options.items()):
        value = option.value
        if isinstance(value, (list, tuple)):
            value = option.get_value()
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        out[name] = value
    return out


def source_urls(source):
    """The URL(s) a source declared, as written (possibly alias-prefixed)."""
    url = getattr(source, "original_url", None)
    if isinstance(url, str) and url:
        return [url]
    marked = getattr(source, "_Source__marked_urls", None) or ()
    return sorted(u for u in marked if isinstance(u, str) and u)


def translate(source, url):
    """Resolve an alias exactly as the source's project does (first-pass config for junctions)."""
    project = source._get_project()
    first_pass = bool(getattr(source, "_Source__first_pass", False))
    return project.translate_url(url, first_pass=first_pass)


def git_commit(source, ref):
    """The commit a git source's ref names, asked of bst's own mirror of the repository."""
    mirror = getattr(getattr(source, "mirror", None), "mirror", None)
    if mirror and os.path.isdir(mirror):
        proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"], cwd=mirror,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              check=False)
        commit = proc.stdout.strip()
        if proc.returncode == 0 and HEX_COMMIT.match(commit):
            return commit, None
    if HEX_COMMIT.match(ref):
        return ref, None
    m = DESCRIBE.search(ref)
    if m:
        return m.group(1), None
    return None, f"ref {ref!r} could not be resolved to a commit (no local mirror of the repository)"


def describe_source(source):
    kind = source.get_kind()
    entry = {"kind": kind}
    warnings = []
    urls = source_urls(source)
    if urls:
        entry["url"] = translate(source, urls[0])
        if entry["url"] != urls[0]:
            entry["alias_url"] = urls[0]
        if len(urls) > 1:
            entry["urls"] = [translate(source, u) for u in urls]
    path = getattr(source, "path", None)
    if isinstance(path, str) and path and not urls:
        entry["path"] = path
    try:
        ref = source.get_ref()
    except Exception as e:  # noqa: BLE001 - a plugin that cannot say is recorded, not fatal
        ref = None
        warnings.append(f"get_ref() failed: {e}")
    if ref is not None and not isinstance(ref, str):
        ref = json.dumps(ref, sort_keys=True)
    entry["ref"] = ref
    if kind == "git" and ref:
        commit, problem = git_commit(source, ref)
        if commit:
            entry["commit"] = commit
        if problem:
            warnings.append(problem)
    if kind not in ("local", "patch") and not (urls and ref):
        missing = " and ".join(x for x, have in (("no URL", urls), ("no ref", ref)) if not have)
        warnings.append(f"the {kind} source plugin reports {missing}; recorded with what is known")
    if warnings:
        entry["warning"] = "; ".join(warnings)
    return entry


def describe_element(element):
    return {
        "name": element._get_full_name(),
        "kind": element.get_kind(),
        "cache_key": element._get_cache_key(),
        "cached": bool(element._cached()) if element.get_kind() != "junction" else None,
        "build_depends": [d._get_full_name() for d in element.dependencies(Scope.BUILD, recurse=False)],
        "runtime_depends": [d._get_full_name() for d in element.dependencies(Scope.RUN, recurse=False)],
        "sources": [describe_source(s) for s in element.sources()],
    }


@cli.command(name="treeship-provenance", short_help="treeship: print the provenance of a pipeline as JSON")
@click.option("--output", required=True, type=click.Path(dir_okay=False, writable=True))
@click.argument("target")
@click.pass_obj
def provenance(app, output, target):
    with app.initialized():
        elements = app.stream.load_selection([target], selection=PipelineSelection.ALL)
        project = app.project
        seen = set()
        described = []
        for element in elements:
            described.append(describe_element(element))
            seen.add(described[-1]["name"])
        for sub in app.context.get_projects():
            junction = sub.junction
            if junction is not None and junction._get_full_name() not in seen:
                described.append(describe_element(junction))
                seen.add(described[-1]["name"])
        targets = app.stream.targets
        result = {
            "buildstream_version": buildstream.__version__,
            "project": project.name,
            "options": option_values(project),
            "target": targets[0]._get_full_name() if targets else target,
            "target_cached": bool(targets and targets[0]._cached()),
            "elements": described,
        }
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.exit(cli(prog_name="bst"))  # pylint: disable=no-value-for-parameter
