"""Runs under the interpreter of a BuildStream 2 ``bst`` (never imported by treeship).

``bst show --format %{source-info}`` (2.5+) is where treeship reads sources from, but it
prints URLs as written, alias-prefixed (``repos:greet``), and drops a source whose plugin
reports nothing. This script loads the same pipeline *through BuildStream itself* (one
extra command, ``treeship-resolve``, added to bst's own command line, so global options,
includes, conditionals and junctions — including a junction's alias mappings to its
parent project — resolve as in ``bst build``) and writes JSON to ``--output``:

    {"buildstream_version", "project", "options", "target", "junctions": [names],
     "elements": {name: {"urls": {as written: resolved}, "unreported": [source kinds]}}}

Exit status 64 means "not BuildStream 2.5 or later".
"""

import json
import os
import sys

# This file lies next to treeship's own buildstream.py: the directory Python puts first on
# sys.path for a script must not shadow BuildStream's package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

EXIT_UNSUPPORTED = 64

try:
    import buildstream
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.stderr.write(f"treeship: this interpreter cannot import buildstream ({e})\n")
    sys.exit(EXIT_UNSUPPORTED)


def _version_tuple(text):
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if not (2, 5) <= _version_tuple(buildstream.__version__) < (3, 0):
    sys.stderr.write(f"treeship: BuildStream {buildstream.__version__} is not supported by this resolver "
                     "(it needs 2.5 or later 2.x)\n")
    sys.exit(EXIT_UNSUPPORTED)

import click  # noqa: E402 - only once the version is known
from buildstream._frontend.cli import cli  # noqa: E402
from buildstream.types import _PipelineSelection  # noqa: E402


def option_values(project):
    out = {}
    for name, option in sorted(project.options._options.items()):
        value = option.value
        if isinstance(value, (list, tuple)):
            value = option.get_value()
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        out[name] = value
    return out


def describe(element):
    urls = {}
    unreported = []
    for source in element.sources():
        infos = source.collect_source_info()
        if not infos:
            unreported.append(source.get_kind())
            continue
        project = source._get_project()
        for info in infos:
            if info.url:
                urls[info.url] = project.translate_url(info.url, source=source)
    return {"urls": urls, "unreported": unreported}


@cli.command(name="treeship-resolve", short_help="treeship: resolve source URLs through BuildStream")
@click.option("--output", required=True, type=click.Path(dir_okay=False, writable=True))
@click.argument("target")
@click.pass_obj
def resolve(app, output, target):
    with app.initialized():
        elements = app.stream.load_selection([target], selection=_PipelineSelection.ALL)
        targets = app.stream.targets
        result = {"buildstream_version": buildstream.__version__, "project": app.project.name,
                  "options": option_values(app.project),
                  "target": targets[0]._get_full_name() if targets else target,
                  "junctions": [], "elements": {}}
        for element in elements:
            result["elements"][element._get_full_name()] = describe(element)
        for project in app.context.get_projects():
            junction = project.junction
            if junction is not None:
                name = junction._get_full_name()
                if name not in result["elements"]:
                    result["junctions"].append(name)
                    result["elements"][name] = describe(junction)
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.exit(cli(prog_name="bst"))  # pylint: disable=no-value-for-parameter
