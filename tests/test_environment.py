"""The import names `xdist` and `kernels` are ours: pytest-xdist and Hugging Face `kernels` must stay out."""

import importlib.metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("distribution", ["pytest-xdist", "kernels"])
def test_clashing_distributions_are_not_installed(distribution):
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return
    pytest.fail(f"{distribution} {dist.version} is installed; it shadows this project's import names (README)")


def test_import_names_resolve_to_this_repository():
    import kernels
    import xdist

    assert Path(xdist.__file__).resolve().parent == REPO / "xdist"
    assert Path(kernels.__file__).resolve().parent == REPO / "kernels"
