"""Helpers for tests that need a real package: build tiny ``.deb`` files and a local,
file-based apt repository that apt reads *instead of* the system's sources.

Nothing here touches the network or ``/etc/apt/sources.list*``: :func:`local_apt_repo`
returns ``-o`` options that point apt's source list, source parts, list state and
cache at private directories. Every command runs as an argument list with a timeout.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalRepo", "build_deb", "dpkg_state", "local_apt_repo", "tools_available"]

_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,62}", re.ASCII)
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~-]{0,40}", re.ASCII)


def tools_available() -> str | None:
    """None when dpkg-deb, dpkg-scanpackages, apt-get and dpkg-query exist, else what is missing."""
    missing = [t for t in ("dpkg-deb", "dpkg-scanpackages", "apt-get", "dpkg-query", "dpkg")
               if shutil.which(t) is None]
    return f"missing on this machine: {', '.join(missing)} (apt-get install dpkg-dev)" if missing else None


def build_deb(workdir: Path, name: str, version: str, *, description: str = "collective test package",
              files: dict[str, str] | None = None) -> Path:
    """Build ``NAME_VERSION_all.deb`` in ``workdir`` with ``dpkg-deb --build``.

    The package (Architecture ``all``, no dependencies, no maintainer scripts) ships
    ``/usr/share/NAME/VERSION.txt`` and one conffile, ``/etc/NAME.conf`` (so that
    "removed" and "purged" differ), unless ``files`` maps other absolute paths to
    contents; paths under ``/etc/`` become conffiles.
    """
    if not _NAME.fullmatch(name) or not _VERSION.fullmatch(version):
        raise ValueError(f"unsafe test package name or version: {name!r} {version!r}")
    root = workdir / f"{name}_{version}"
    if root.exists():
        shutil.rmtree(root)
    (root / "DEBIAN").mkdir(parents=True)
    payload = files or {f"/usr/share/{name}/VERSION.txt": f"{name} {version}\n",
                        f"/etc/{name}.conf": f"# {name} test configuration\n"}
    for path, text in payload.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: collective tests <tests@example.invalid>\nSection: misc\nPriority: optional\n"
        f"Description: {description}\n This package only exists for collective's tests.\n")
    conffiles = [path for path in payload if path.startswith("/etc/")]
    if conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(f"{path}\n" for path in conffiles))
    out = workdir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True, text=True, timeout=60)
    return out


@dataclass
class LocalRepo:
    """A flat ``file:`` apt repository and the apt options that make it apt's only source."""

    #: the repository directory (holds the .debs and ``Packages``)
    path: Path
    #: ``Key=Value`` strings for ``plugins.package.apt_options`` (each becomes ``-o Key=Value``)
    apt_options: list[str] = field(default_factory=list)

    def argv_options(self) -> list[str]:
        """The options as ``-o`` arguments for running apt-get directly."""
        return [arg for opt in self.apt_options for arg in ("-o", opt)]

    def rescan(self) -> None:
        """Regenerate ``Packages`` after adding or removing .deb files."""
        proc = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
                              cwd=self.path, check=True, capture_output=True, text=True, timeout=60)
        (self.path / "Packages").write_text(proc.stdout)
        # apt asks for compressed indexes first; a .gz copy saves the "blank filename" retries.
        with gzip.open(self.path / "Packages.gz", "wt") as handle:
            handle.write(proc.stdout)


def local_apt_repo(workdir: Path, debs: list[Path]) -> LocalRepo:
    """Copy ``debs`` into ``workdir/repo``, index them with ``dpkg-scanpackages`` and
    return a :class:`LocalRepo` whose options isolate apt from the system's sources:
    ``Dir::Etc::sourcelist`` is a private file, ``Dir::Etc::sourceparts`` an empty
    directory, and ``Dir::State::Lists`` / ``Dir::Cache`` private directories.
    The dpkg database is the real one: installing really installs."""
    repo = workdir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, repo / deb.name)
    # apt's download sandbox user (_apt) cannot read pytest's 0700 temp dirs.
    for directory in (workdir, repo):
        directory.chmod(0o755)
    local = LocalRepo(repo)
    local.rescan()
    etc, parts = workdir / "apt-etc", workdir / "apt-etc" / "sources.list.d"
    lists, cache = workdir / "apt-lists", workdir / "apt-cache"
    for directory in (parts, lists / "partial", cache / "archives" / "partial"):
        directory.mkdir(parents=True, exist_ok=True)
    sources = etc / "sources.list"
    sources.write_text(f"deb [trusted=yes] file:{repo} ./\n")
    local.apt_options = [
        f"Dir::Etc::sourcelist={sources}",
        f"Dir::Etc::sourceparts={parts}",
        f"Dir::State::Lists={lists}",
        f"Dir::Cache={cache}",
        "APT::Sandbox::User=root",
    ]
    return local


def dpkg_state(name: str) -> tuple[str, str] | None:
    """``(status, version)`` from the real dpkg database (``dpkg-query``), None when unknown."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}\t${Version}\n", "--", name],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    status, _, version = proc.stdout.splitlines()[0].partition("\t")
    return status, version
