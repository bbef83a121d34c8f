"""The README and the docs/ pages: every relative link leads to a file (and a heading, for an anchor), the
README stays short, and every docs page is reachable from it."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import CLASSES, DEFAULT_BACKBONE, ENV, SMALL_RUN, init_project, picture, run

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def prose(text):
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped except '-' and '_', spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path):
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^(https?:|mailto:)", target, re.IGNORECASE):
            continue
        yield target


def test_the_slug_follows_github():
    assert slug("Sharing a model: what is safe to load, from whom") == "sharing-a-model-what-is-safe-to-load-from-whom"
    assert slug("Parameters that matter (`params.yaml`)") == "parameters-that-matter-paramsyaml"
    assert slug("Would more pictures help? The learning curve by pictures") == (
        "would-more-pictures-help-the-learning-curve-by-pictures")
    assert slug("data_and layouts") == "data_and-layouts"


def test_there_are_docs_pages():
    assert DOCS, "docs/ holds no .md page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
            continue
        if anchor:
            if dest.suffix != ".md" or not dest.is_file():
                broken.append(f"{target}: an anchor into a non-markdown target")
            elif anchor not in anchors(dest):
                broken.append(f"{target}: no heading with slug '{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 220, f"README.md has {n} lines; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README) if t.partition("#")[0]}
    missing = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


OWN_IMAGES = "## Your own images"
PHOTOS = "/path/to/my_photos"  # the snippet's folder: the one thing the test replaces


def own_images_snippet():
    """The shell commands of the README's "Your own images" section, as a reader would copy them."""
    section = README.read_text(encoding="utf-8").split(OWN_IMAGES, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```(?:bash|sh)\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, f"no shell block under '{OWN_IMAGES}' in README.md"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_own_images_commands_give_a_leaderboard_on_a_folder_of_class_folders(tmp_path):
    """A fresh clone, a folder of <class>/ subfolders of JPEG and PNG files, the README's commands as written
    (only the folder's path replaced): the leaderboard lands where the README says and ranks every pair."""
    snippet = own_images_snippet()
    assert PHOTOS in snippet
    photos, rng = tmp_path / "my_photos", np.random.default_rng(2)
    for c, name in enumerate(CLASSES):
        (photos / name).mkdir(parents=True)
        for i in range(6):  # 1 picture a class carved to valid, 1 to test, 4 left to train
            picture(rng, c).save(photos / name / f"{i}.{'png' if i % 2 else 'jpg'}")

    root = tmp_path / "project"
    root.mkdir()
    # The clone as shipped (data.root: null, layout_dir: the Kaggle dataset's), with the small run's params for
    # speed: random weights (offline), no views, no learning curve, two classifiers.
    init_project(root, photos, overrides={**SMALL_RUN, "views.count": 0, "learning_curve.enabled": False})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["root"] = None
    params["classifiers"] = {name: params["classifiers"][name] for name in ("head", "logreg")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "the shipped data section"], root, ENV)

    shown = run(["bash", "-euo", "pipefail", "-c", snippet.replace(PHOTOS, str(photos))], root, ENV)
    board = (root / "artifacts" / "comparison.md").read_text()
    assert board.strip() in shown  # what `cat` showed
    for name in ("head", "logreg"):
        assert f"| {DEFAULT_BACKBONE} | {name} |" in board
    assert "carved from train" in board  # class folders only: valid and test were carved
