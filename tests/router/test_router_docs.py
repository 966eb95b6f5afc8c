"""The router configurations the README and docs/router.md show are real: each parses,
and the README's complete example builds a Router with one interface per backend (no
backend connects until used, so none of the hosts it names needs to exist)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kestrelpy.router import Router

ROOT = Path(__file__).resolve().parents[2]
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.DOTALL)


def router_blocks(document: str) -> list[str]:
    text = (ROOT / document).read_text()
    return [block for block in TOML_BLOCK.findall(text) if "[router." in block]


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application modules the examples name (callbacks are imported when read)."""
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in ("billing", "consumers", "jobs", "tasks"):
        (package / f"{module}.py").write_text("def handle(frame, config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_readme_example_has_one_interface_per_backend(tmp_path: Path, shop: None) -> None:
    (block,) = router_blocks("README.md")
    config = tmp_path / "router.toml"
    config.write_text(block)
    with Router.from_toml(config, default_path=tmp_path / "d") as router:
        assert router.interfaces == [
            "orders",
            "tasks",
            "partner",
            "partner_buffer",
            "billing",
            "default",
        ]
        used = {router.interface_named(name).implementation for name in router.interfaces}
        assert used == {"kestrel", "local", "http", "stomp"}
        assert router.interface_for("tasks_images").name == "tasks"
        assert router.interface_for("invoices").name == "billing"


@pytest.mark.parametrize("document", ["README.md", "docs/router.md"])
def test_every_router_example_parses(document: str, tmp_path: Path, shop: None) -> None:
    blocks = router_blocks(document)
    assert blocks
    for block in blocks:
        tables = tomllib.loads(block)["router"]
        with Router(tables, default_path=tmp_path / "d") as router:
            assert set(tables) <= set(router.interfaces)
