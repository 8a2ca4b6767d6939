"""The sdist and the wheel, built the way pip and PyPI build them, carry the license.

The build runs on a copy of the files git tracks (what a clone has), with the build backend
``pyproject.toml`` asks for, installed into a private folder: the sdist is built first, and the
wheel from the unpacked sdist, as ``pip install`` of an sdist does.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

import airflow_provider_knative

LICENSE_FILES = ("LICENSE", "NOTICE")


def _build_backend(root: Path) -> Path:
    """A folder holding the build requirements of pyproject.toml (setuptools>=77, wheel)."""
    import tomllib

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    target = root / "backend"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *requires],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _hook(backend: Path, source: Path, hook: str, out: Path) -> str:
    script = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=source,
        env={"PYTHONPATH": str(backend), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (the build copies the tracked files)")
    root = tmp_path_factory.mktemp("dist")
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    source = root / "source"
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    backend = _build_backend(root)
    out = root / "out"
    out.mkdir()
    sdist = out / _hook(backend, source, "build_sdist", out)
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "unpacked", filter="data")
    (unpacked,) = (root / "unpacked").iterdir()
    wheel = out / _hook(backend, unpacked, "build_wheel", out)
    return sdist, wheel


def test_the_sdist_ships_the_license_and_the_notice(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        for name in LICENSE_FILES:
            member = tar.extractfile(f"{top}/{name}")
            assert member is not None
            assert member.read() == (REPO / name).read_bytes()


def test_the_wheel_ships_them_and_its_metadata_names_them(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        for name in LICENSE_FILES:
            assert whl.read(f"{dist_info}/licenses/{name}") == (REPO / name).read_bytes()
        metadata = email.parser.Parser().parsestr(whl.read(f"{dist_info}/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert sorted(metadata.get_all("License-File") or []) == sorted(LICENSE_FILES)
    assert metadata["Version"] == airflow_provider_knative.__version__


def test_the_license_is_the_apache_2_0_text() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(re.findall(r"^\s+\d\. ", text, flags=re.M)) == 9  # the nine sections


def test_the_changelog_describes_the_version_the_package_reports() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+[^\]\s]*)\]?", changelog, flags=re.M)
    assert versions, "CHANGELOG.md has no '## <version>' section"
    assert versions[0] == airflow_provider_knative.__version__, (
        versions[0],
        airflow_provider_knative.__version__,
    )
