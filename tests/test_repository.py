"""The repository keeps its own rules: small modules, documents inside it,
links that resolve, and every package installed."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
#: The most lines a module may have (docs/architecture.md §7): one sitting's read.
MAX_MODULE_LINES = 600
#: Generated code, exempt from the size rule.
GENERATED = re.compile(r"_pb2\.pyi?$")
#: Names of the documents of a brief kept outside the repository, which a
#: clone does not have: nothing may point at them.
OUTSIDE = re.compile(r"\.\./shared|\b(?:PROTOCOL|DESIGN|PITFALLS|STYLE)\.md\b")
#: A Markdown link or image target: [text](target).
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    """The files git tracks under ROOT that match ``patterns``."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


class ModuleSizeTests(SynchronousTestCase):
    def test_no_module_is_over_600_lines(self) -> None:
        big = []
        for path in tracked("*.py"):
            if GENERATED.search(path.name):
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_MODULE_LINES:
                big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        self.assertEqual(big, [], f"split these by concern (at most {MAX_MODULE_LINES} lines)")


class TestCaseNameTests(SynchronousTestCase):
    def test_every_source_file_names_tests_that_exist(self) -> None:
        """The ``test-case-name`` header on the first line (Twisted's habit) lets
        anyone find a module's tests; it must name test modules that exist."""
        wrong = []
        for path in tracked("daojia_msg/*.py", "twisted/*.py"):
            if path.name == "__init__.py" or GENERATED.search(path.name):
                continue
            first = path.read_text(encoding="utf-8").partition("\n")[0]
            header = re.search(r"test-case-name:\s*(\S+)\s*-\*-", first)
            if header is None:
                wrong.append(f"{path.relative_to(ROOT)}: no test-case-name header")
                continue
            for name in header.group(1).split(","):
                module = ROOT.joinpath(*name.split("."))
                if not (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()):
                    wrong.append(f"{path.relative_to(ROOT)}: {name} does not exist")
        self.assertEqual(wrong, [])


class SelfContainedTests(SynchronousTestCase):
    def test_nothing_refers_to_a_folder_outside_the_repository(self) -> None:
        found = []
        for path in tracked():
            if path == Path(__file__).resolve() or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if OUTSIDE.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
        self.assertEqual(found, [])

    def test_every_relative_link_in_the_documents_resolves(self) -> None:
        broken = []
        for path in tracked("*.md"):
            for target in LINK.findall(path.read_text(encoding="utf-8")):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # an absolute URL, or an anchor in the same page
                where = (path.parent / target.split("#", 1)[0]).resolve()
                if not where.exists():
                    broken.append(f"{path.relative_to(ROOT)}: {target}")
                elif not where.is_relative_to(ROOT):
                    broken.append(f"{path.relative_to(ROOT)}: {target} (outside the repository)")
        self.assertEqual(broken, [])

    def test_the_documents_the_readme_names_are_in_the_clone(self) -> None:
        for name in ("docs/protocol.md", "docs/openapi.yaml", "docs/architecture.md",
                     "docs/operations.md"):
            self.assertTrue((ROOT / name).is_file(), name)


class PackagingTests(SynchronousTestCase):
    def test_every_package_is_installed_by_a_plain_install(self) -> None:
        """setup.cfg lists packages by hand (twisted/plugins has no __init__.py):
        a package missing from the list is missing from a ``pip install .``."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = set(config["options"]["packages"].split())
        packages = {
            ".".join(init.parent.relative_to(ROOT).parts)
            for init in tracked("daojia_msg/*__init__.py")
        }
        self.assertEqual(packages - listed, set())
        self.assertEqual(listed - packages - {"twisted.plugins"}, set())
