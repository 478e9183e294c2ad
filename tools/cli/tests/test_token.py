from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixsim_cli.main import typer_app as app
from pixsim_common.auth import TokenVerifier

pytestmark = pytest.mark.unit


def test_token_is_verifiable_with_the_public_key(
    tmp_path: Path, signing_keys: tuple[str, str]
) -> None:
    key = tmp_path / "key.pem"
    key.write_text(signing_keys[0])
    result = CliRunner().invoke(app, ["token", "--user", "alice", "--admin", "--key", str(key)])
    assert result.exit_code == 0, result.output
    identity = TokenVerifier(
        public_key=signing_keys[1], issuer="pixsim-local", audience="pixsim"
    ).verify("Bearer " + result.stdout.strip())
    assert (identity.user_id, identity.is_admin) == ("alice", True)


def test_a_missing_key_says_how_to_get_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["token", "--user", "a", "--key", str(tmp_path / "no")])
    assert result.exit_code == 2
    assert "make run" in result.output
