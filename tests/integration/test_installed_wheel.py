"""The package as a user gets it: built into a wheel, installed, used from outside the repository.

A checkout hides what a wheel forgets (the profiles, the licence, a whole
subpackage), so this builds a wheel from a copy of the working tree, installs
it into a temporary folder, and runs Python elsewhere with that folder ahead of
everything else on its path. The dependencies still come from this venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
# What the build reads: pyproject.toml names README.md and LICENSE, and maps
# firmware_profiles/ into the package.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "device_sdk", "firmware_profiles")

SHOW_WHERE_PROFILES_COME_FROM = """
import json
import device_sdk
from device_sdk.profiles import available_profiles, default_search_path, load_profile

profile = load_profile("cellular-low-data", env={})
print(json.dumps({
    "package": device_sdk.__file__,
    "search_path": [str(folder) for folder in default_search_path()],
    "profiles": sorted(available_profiles()),
    "cellular": profile.source,
}))
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    wheel: Path
    target: Path  # what --target installed into
    elsewhere: Path  # a working directory outside the repository


def run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools, the build backend, is not installed: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("wheel")
    # A copy, because a build writes build/ and *.egg-info into its source folder:
    # the working tree stays clean, and test runs never share a build folder.
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPOSITORY / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    dist, target, elsewhere = root / "dist", root / "site", root / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    # --no-build-isolation: build with this venv's setuptools, no download needed.
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)], cwd=root
    )
    (wheel,) = dist.glob("device_sdk-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], cwd=root)
    return Installed(wheel=wheel, target=target, elsewhere=elsewhere)


def python_from(installed: Installed, *args: str) -> str:
    """Run Python outside the repository, importing device_sdk from the installed wheel."""
    env = {**os.environ, "PYTHONPATH": str(installed.target)}
    return run([sys.executable, *args], cwd=installed.elsewhere, env=env)


def test_an_installed_wheel_loads_its_profiles_by_name(installed: Installed) -> None:
    shown = json.loads(python_from(installed, "-c", SHOW_WHERE_PROFILES_COME_FROM))
    package = installed.target / "device_sdk"
    assert Path(shown["package"]) == package / "__init__.py"  # not the checkout
    assert shown["search_path"] == [str(package / "firmware_profiles")]
    assert shown["profiles"] == sorted(p.stem for p in REPOSITORY.glob("firmware_profiles/*.toml"))
    assert Path(shown["cellular"]).parent == package / "firmware_profiles"


def test_profile_check_finds_and_validates_the_installed_profiles(installed: Installed) -> None:
    checked = python_from(installed, "-m", "device_sdk.cli", "profile", "check")
    lines = checked.splitlines()
    names = sorted(p.stem for p in REPOSITORY.glob("firmware_profiles/*.toml"))
    assert sorted(line.split()[1] for line in lines) == names
    assert all(line.startswith("ok ") for line in lines), checked
    assert all(str(installed.target) in line for line in lines), checked


def test_the_wheel_carries_every_module_and_profile_of_the_tree(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = set(wheel.namelist())
    modules = {p.relative_to(REPOSITORY).as_posix() for p in REPOSITORY.glob("device_sdk/**/*.py")}
    # A package folder missing from pyproject.toml's list would be missing here.
    assert modules - shipped == set()
    profiles = {
        f"device_sdk/firmware_profiles/{p.name}" for p in REPOSITORY.glob("firmware_profiles/*")
    }
    assert profiles - shipped == set()
    assert "device_sdk/py.typed" in shipped


def test_the_wheel_carries_the_licence_in_its_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        (dist_info,) = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" in name}
        licences = [
            n for n in wheel.namelist() if n.startswith(dist_info) and n.endswith("LICENSE")
        ]
        assert len(licences) == 1, wheel.namelist()
        licence = wheel.read(licences[0]).decode()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert licence == (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in licence
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
