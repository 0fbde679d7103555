"""Read the checks an admin defined in NRPE's configuration: ``command[NAME]=...`` lines.

Files are read in this order, later definitions of a name replacing earlier ones (as
NRPE does): each ``conf_file`` (default ``/etc/nagios/nrpe.cfg``), following its
``include=FILE`` and ``include_dir=DIR`` lines where they stand (``include_dir`` reads
every ``*.cfg`` below ``DIR``, sorted, recursively), then every ``*.cfg`` of each
``conf_dir`` (default ``/etc/nagios/nrpe.d``). Relative include paths are relative to the
file that names them. Every other NRPE setting is ignored: collective's own config decides
timeouts and whether arguments are allowed (``dont_blame_nrpe`` does not).

A command line is split into an argv with POSIX shell quoting rules (:mod:`shlex`) and
is never given to a shell. A line that needs a shell to mean what it says (an unquoted
``| & ; < > ( )``, a backtick, ``$(``, ``${``, ``$VAR``, or a leading ``VAR=value``) is kept
with a :attr:`Command.problem`, so calling it says why it cannot run instead of running
something else.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "ARG_MACRO",
    "COMMAND_NAME",
    "Command",
    "NrpeConfig",
    "load",
    "shell_syntax",
]

#: Names a check may have (the ``command`` input's pattern, and the only ones loaded).
COMMAND_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", re.ASCII)
#: ``$ARG1$`` .. ``$ARG99$``: where ``args`` are substituted.
ARG_MACRO = re.compile(r"\$ARG([1-9][0-9]?)\$", re.ASCII)
#: A shell variable expansion (``$ARGn$`` macros are skipped before this is tried).
_SHELL_VARIABLE = re.compile(r"\$[A-Za-z_]", re.ASCII)
_COMMAND_LINE = re.compile(r"command\[([^\]]*)\]\s*=(.*)", re.ASCII)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=", re.ASCII)
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
#: warnings already logged, so a bad line is logged once, not at every request
_logged: set[str] = set()

#: Files larger than this are not read (an nrpe.cfg is a few KiB).
MAX_FILE_BYTES = 1 << 20
#: At most this many files are read for one configuration.
MAX_FILES = 1000

DEFAULT_CONF_FILE = "/etc/nagios/nrpe.cfg"
DEFAULT_CONF_DIR = "/etc/nagios/nrpe.d"


@dataclass(frozen=True)
class Command:
    """One ``command[NAME]=...`` definition."""

    name: str
    #: the command line as written after ``=``
    line: str
    #: ``FILE:LINE`` where it was defined
    source: str
    #: the argv template (``$ARGn$`` still in it); empty when :attr:`problem` is set
    argv: tuple[str, ...] = ()
    #: why the line cannot run without a shell, or None
    problem: str | None = None

    @property
    def arguments(self) -> int:
        """How many arguments it takes: the highest ``$ARGn$`` it uses (0 for none)."""
        return max((int(n) for token in self.argv for n in ARG_MACRO.findall(token)), default=0)


@dataclass
class NrpeConfig:
    """The commands found, by name, and what was read."""

    commands: dict[str, Command] = field(default_factory=dict)
    #: the files actually read, in order
    files: list[str] = field(default_factory=list)
    #: one line per problem met while reading (unreadable file, bad line, ...)
    warnings: list[str] = field(default_factory=list)

    def describe_sources(self) -> str:
        """``/etc/nagios/nrpe.cfg, /etc/nagios/nrpe.d/load.cfg`` or why nothing was read."""
        return ", ".join(self.files) if self.files else "no NRPE configuration file was found"


def shell_syntax(line: str) -> str | None:
    """The first piece of ``line`` that only a shell would understand, or None.

    Quoting follows the shell: nothing is special inside single quotes, and inside
    double quotes only ``$`` and backticks are.
    """
    quote = ""
    escaped = False
    skip = 0
    for index, char in enumerate(line):
        if skip:
            skip -= 1
            continue
        if escaped:
            escaped = False
            continue
        if quote == "'":
            if char == "'":
                quote = ""
            continue
        if char == "\\":
            escaped = True
            continue
        if char == "`":
            return "`"
        if char == "$":
            rest = line[index:]
            macro = ARG_MACRO.match(rest)
            if macro is not None:
                skip = len(macro.group(0)) - 1
                continue
            if rest.startswith(("$(", "${")):
                return rest[:2]
            if _SHELL_VARIABLE.match(rest):
                return rest[:1 + len(rest[1:]) - len(rest[1:].lstrip(_NAME_CHARS))]
        if quote == '"':
            if char == '"':
                quote = ""
            continue
        if char in "'\"":
            quote = char
        elif char in "|&;<>()":
            return char
    return None


def parse_command(name: str, line: str, source: str) -> Command:
    """A :class:`Command` from the text after ``=``; problems are recorded, not raised."""
    text = line.strip()
    if not text:
        return Command(name, line, source, problem="the command line is empty")
    bad = shell_syntax(text)
    if bad is not None:
        return Command(name, line, source, problem=f"the command line uses shell syntax ({bad}); "
                       "collective runs checks without a shell: wrap it in a script")
    try:
        argv = tuple(shlex.split(text, comments=False, posix=True))
    except ValueError as exc:
        return Command(name, line, source, problem=f"the command line cannot be split: {exc}")
    if not argv:
        return Command(name, line, source, problem="the command line is empty")
    if _ASSIGNMENT.match(argv[0]):
        return Command(name, line, source, problem=f"the command line starts with a variable "
                       f"assignment ({argv[0]}); collective runs checks without a shell")
    if ARG_MACRO.search(argv[0]):
        return Command(name, line, source, problem="the program itself cannot be an $ARGn$ argument")
    return Command(name, line, source, argv=argv)


def _as_list(value: str | Sequence[str] | None, default: str) -> list[str]:
    if value is None:
        return [default]
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value if str(v)]


class _Reader:
    def __init__(self) -> None:
        self.config = NrpeConfig()
        self._seen: set[Path] = set()

    def file(self, path: Path, *, missing_ok: bool) -> None:
        try:
            real = path.resolve()
        except OSError as exc:
            self.config.warnings.append(f"{path}: {exc}")
            return
        if real in self._seen:
            return  # include loops and files named twice are read once
        if len(self._seen) >= MAX_FILES:
            self.config.warnings.append(f"{path}: not read, more than {MAX_FILES} files")
            return
        self._seen.add(real)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                self.config.warnings.append(f"{path}: not read, larger than {MAX_FILE_BYTES} bytes")
                return
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if not missing_ok:
                self.config.warnings.append(f"{path}: no such file")
            return
        except OSError as exc:
            self.config.warnings.append(f"{path}: cannot be read: {exc.strerror or exc}")
            return
        self.config.files.append(str(path))
        for number, raw in enumerate(text.splitlines(), 1):
            self.line(path, number, raw)

    def directory(self, path: Path, *, missing_ok: bool) -> None:
        if not path.is_dir():
            if not missing_ok:
                self.config.warnings.append(f"{path}: no such directory")
            return
        try:
            found = sorted(p for p in path.rglob("*.cfg") if p.is_file())
        except OSError as exc:
            self.config.warnings.append(f"{path}: cannot be listed: {exc.strerror or exc}")
            return
        for item in found:
            self.file(item, missing_ok=False)

    def line(self, path: Path, number: int, raw: str) -> None:
        text = raw.strip()
        if not text or text.startswith("#"):
            return
        where = f"{path}:{number}"
        match = _COMMAND_LINE.fullmatch(text)
        if match is not None:
            name, line = match.group(1), match.group(2)
            if not COMMAND_NAME.fullmatch(name):
                self.config.warnings.append(f"{where}: command name {name!r} is not usable "
                                            f"(allowed: {COMMAND_NAME.pattern}); skipped")
                return
            self.config.commands[name] = parse_command(name, line, where)
            return
        key, sep, value = text.partition("=")
        if not sep:
            self.config.warnings.append(f"{where}: not a setting; skipped")
            return
        key, value = key.strip(), value.strip()
        target = Path(value) if Path(value).is_absolute() else path.parent / value
        if key == "include":
            self.file(target, missing_ok=False)
        elif key == "include_dir":
            self.directory(target, missing_ok=False)


def load(conf_file: str | Sequence[str] | None = None,
         conf_dir: str | Sequence[str] | None = None) -> NrpeConfig:
    """Read the NRPE configuration: ``conf_file`` (one path or a list, default
    :data:`DEFAULT_CONF_FILE`) then ``conf_dir`` (default :data:`DEFAULT_CONF_DIR`).

    Missing default locations are not an error; a missing path the admin named is a
    warning. Never raises for bad content.
    """
    reader = _Reader()
    files = _as_list(conf_file, DEFAULT_CONF_FILE)
    dirs = _as_list(conf_dir, DEFAULT_CONF_DIR)
    for name in files:
        reader.file(Path(name), missing_ok=conf_file is None)
    for name in dirs:
        reader.directory(Path(name), missing_ok=conf_dir is None)
    for warning in reader.config.warnings:
        if warning not in _logged:
            _logged.add(warning)
            log.warning("nrpe configuration: %s", warning)
    return reader.config
