"""Helpers for tests that need a real package: build tiny ``.deb`` files and a local,
file-based apt repository that apt reads *instead of* the system's sources; likewise tiny
noarch ``.rpm`` files (``rpmbuild``) in a ``createrepo_c`` repository for dnf.

Nothing here touches the network or ``/etc/apt/sources.list*``: :func:`local_apt_repo`
returns ``-o`` options that point apt's source list, source parts, list state and
cache at private directories; :meth:`LocalRpmRepo.dnf_options` makes dnf read only the
local repository and install into a private ``--installroot``. Every command runs as an
argument list with a timeout.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalRepo", "LocalRpmRepo", "build_deb", "build_rpm", "dpkg_state", "local_apt_repo",
           "local_rpm_repo", "rpm_state", "rpm_tools_available", "tools_available"]

_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,62}", re.ASCII)
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~-]{0,40}", re.ASCII)


def tools_available() -> str | None:
    """None when dpkg-deb, dpkg-scanpackages, apt-get and dpkg-query exist, else what is missing."""
    missing = [t for t in ("dpkg-deb", "dpkg-scanpackages", "apt-get", "dpkg-query", "dpkg")
               if shutil.which(t) is None]
    return f"missing on this machine: {', '.join(missing)} (apt-get install dpkg-dev)" if missing else None


def real_apt_problem() -> str | None:
    """Why real apt/dpkg tests cannot run here, or None."""
    if shutil.which("dpkg") is None:
        return "not a dpkg-based system"
    if os.geteuid() != 0:
        return "installing packages needs root"
    return tools_available()


def purge_test_package(name: str = "collective-test-pkg", wait: float = 180.0) -> None:
    """``dpkg --purge NAME``, retried while another process holds the dpkg lock
    (other test suites install packages on this machine too)."""
    if shutil.which("dpkg") is None or os.geteuid() != 0:
        return
    deadline = time.monotonic() + wait
    while True:
        proc = subprocess.run(["dpkg", "--purge", "--", name], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if "lock" not in proc.stderr or time.monotonic() > deadline:
            return
        time.sleep(1)


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


# -- rpm / dnf -------------------------------------------------------------------------------

_RPM_SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: {description}
License: MIT
BuildArch: noarch

%description
This package only exists for collective's tests.

%install
mkdir -p %{{buildroot}}/usr/share/{name}
printf '%s\\n' '{name} {version}' > %{{buildroot}}/usr/share/{name}/VERSION.txt

%files
/usr/share/{name}/VERSION.txt
"""


def rpm_tools_available() -> str | None:
    """None when rpmbuild, createrepo_c, dnf and rpm exist, else what is missing."""
    missing = [t for t in ("rpmbuild", "createrepo_c", "dnf", "rpm") if shutil.which(t) is None]
    return (f"missing on this machine: {', '.join(missing)} (apt-get install dnf rpm createrepo-c)"
            if missing else None)


def build_rpm(workdir: Path, name: str, version: str, *, release: str = "1",
              description: str = "collective test package") -> Path:
    """Build ``NAME-VERSION-RELEASE.noarch.rpm`` in ``workdir`` with ``rpmbuild -bb`` from a
    generated spec; the package ships ``/usr/share/NAME/VERSION.txt`` only.

    Everything rpmbuild writes stays under ``workdir``: a private ``_topdir``, ``_tmppath``
    and ``_dbpath`` (rpmbuild would otherwise use /var/tmp and the invoking user's rpmdb).
    """
    if not _NAME.fullmatch(name) or not _VERSION.fullmatch(version) or "-" in version \
            or not _VERSION.fullmatch(release) or "-" in release:
        raise ValueError(f"unsafe test package name, version or release: {name!r} {version!r} {release!r}")
    top = workdir / "rpmbuild"
    for sub in ("SPECS", "SOURCES", "BUILD", "BUILDROOT", "RPMS", "SRPMS", "tmp", "rpmdb"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    spec = top / "SPECS" / f"{name}-{version}-{release}.spec"
    spec.write_text(_RPM_SPEC.format(name=name, version=version, release=release,
                                     description=description))
    subprocess.run(["rpmbuild", "-bb", "--quiet",
                    "--define", f"_topdir {top}", "--define", f"_tmppath {top / 'tmp'}",
                    "--define", f"_dbpath {top / 'rpmdb'}", str(spec)],
                   check=True, capture_output=True, text=True, timeout=120)
    built = top / "RPMS" / "noarch" / f"{name}-{version}-{release}.noarch.rpm"
    out = workdir / built.name
    shutil.copy(built, out)
    return out


@dataclass
class LocalRpmRepo:
    """A ``createrepo_c`` repository and the dnf options that make it dnf's only source."""

    #: the repository directory (holds the .rpms and ``repodata/``)
    path: Path
    #: an empty directory passed as ``reposdir`` (no .repo file is ever read)
    reposdir: Path

    def dnf_options(self, installroot: Path, repo_id: str = "collective-test") -> list[str]:
        """``plugins.package.dnf_options`` that install into ``installroot`` from this repo only."""
        return [f"--installroot={installroot}", "--releasever=12", f"--setopt=reposdir={self.reposdir}",
                "--disablerepo=*", f"--repofrompath={repo_id},{self.path}", f"--enablerepo={repo_id}",
                "--nogpgcheck"]


def local_rpm_repo(workdir: Path, rpms: list[Path]) -> LocalRpmRepo:
    """Copy ``rpms`` into ``workdir/rpm-repo`` and index them with ``createrepo_c``."""
    repo = workdir / "rpm-repo"
    repo.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy(rpm, repo / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True, capture_output=True, text=True,
                   timeout=120)
    reposdir = workdir / "empty-reposdir"
    reposdir.mkdir(exist_ok=True)
    return LocalRpmRepo(repo, reposdir)


def rpm_state(root: Path, name: str) -> list[str]:
    """``EPOCH:VERSION-RELEASE.ARCH`` of each installed instance of ``name`` in the rpm
    database under ``root`` (``rpm --root ROOT -q``); empty when not installed."""
    proc = subprocess.run(["rpm", "--root", str(root), "-q", "--qf",
                           "%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n", "--", name],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"rpm -q failed ({proc.returncode}): {proc.stderr.strip()}")
    return [] if proc.returncode == 1 else proc.stdout.split()
