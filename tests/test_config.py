"""The config file: validated once, with clear errors; secrets by reference only."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sarbot.config import ConnectorEntry, Settings, SourceFacts, load_settings, validate
from sarbot.connector import ENTRY_POINT_GROUP
from sarbot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"

MINIMAL = """
[controller]
name = "Red Train IT Ltd"
email = "Support@RedTrain.test"
[imap]
host = "127.0.0.1"
username = "support@redtrain.test"
password = { file = "imap-password" }
[smtp]
host = "127.0.0.1"
[storage]
database_url = "sqlite:///state.db"
export_dir = "exports"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "imap-password").write_text("s3cret-value\n")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


class TestExample:
    def test_example_config_loads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """config.example.toml is a valid config once its secrets are provided."""
        monkeypatch.setenv("SARBOT_IMAP_PASSWORD", "x")
        for name in ("HELPDESK_DB_URL", "WORDPRESS_DB_URL", "TACTICALRMM_URL"):
            monkeypatch.setenv(f"SARBOT_{name}", "sqlite:///:memory:")
        for name in ("KEEPASS_PASSWORD", "CONTACT_MAILBOX_PASSWORD"):
            monkeypatch.setenv(f"SARBOT_{name}", "x")
        settings = load_settings(EXAMPLE)
        assert [c.type for c in settings.connectors] == [
            "sql",
            "keepass",
            "wordpress",
            "tacticalrmm",
            "imap_mailbox",
            "access_log",
        ]

    def test_example_connectors_validate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each example connector table is valid for its type's own settings."""
        self.test_example_config_loads(monkeypatch)
        for entry in load_settings(EXAMPLE).connectors:
            [ep] = entry_points(group=ENTRY_POINT_GROUP, name=entry.type)
            validate(entry.options, ep.load().Settings, source="example", base_dir=ROOT)

    def test_example_documents_every_setting(self) -> None:
        """Every setting sarbot knows appears in config.example.toml (commented out or not)."""
        text = EXAMPLE.read_text()
        for section, model in Settings.model_fields.items():
            annotation = model.annotation
            fields = getattr(annotation, "model_fields", None)
            if fields is None:
                continue
            assert f"[{section}]" in text, section
            for key in fields:
                assert f"\n{key} =" in text or f"\n# {key} =" in text, (
                    f"{section}.{key} is undocumented"
                )

    def test_example_documents_the_common_connector_keys(self) -> None:
        """Every common [[connectors]] key and every Article 15 fact is described."""
        text = EXAMPLE.read_text()
        for key in [*ConnectorEntry.model_fields, *SourceFacts.model_fields]:
            assert f"#   {key} " in text, f"connectors.{key} is undocumented"

    def test_example_has_no_inline_secrets(self) -> None:
        """Every password in the example is a reference."""
        data = tomllib.loads(EXAMPLE.read_text())
        assert data["imap"]["password"] == {"env": "SARBOT_IMAP_PASSWORD"}


class TestLoading:
    def test_minimal_config_with_defaults(self, tmp_path: Path) -> None:
        """Defaults fill the rest; paths resolve against the config's folder; secrets are read."""
        settings = load_settings(write(tmp_path, MINIMAL))
        assert settings.controller.email == "support@redtrain.test"
        assert settings.imap.password is not None
        assert settings.imap.password.get_secret_value() == "s3cret-value"
        assert settings.storage.export_dir == tmp_path / "exports"
        assert settings.requests.confirmation_expiry_days == 14
        assert "s3cret" not in repr(settings)

    def test_env_secret(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """``{ env = NAME }`` reads the variable."""
        monkeypatch.setenv("IMAP_PW", "from-env")
        text = MINIMAL.replace('{ file = "imap-password" }', '{ env = "IMAP_PW" }')
        password = load_settings(write(tmp_path, text)).imap.password
        assert password is not None and password.get_secret_value() == "from-env"


class TestErrors:
    def error(self, tmp_path: Path, text: str) -> str:
        with pytest.raises(ConfigError) as caught:
            load_settings(write(tmp_path, text))
        return str(caught.value)

    def test_unknown_key_names_the_path_and_suggests(self, tmp_path: Path) -> None:
        """A typo gets its key path and the likely intended key."""
        message = self.error(
            tmp_path, MINIMAL.replace('host = "127.0.0.1"\nusername', 'hots = "x"\nusername')
        )
        assert "imap.hots: unknown key (did you mean 'host'?)" in message

    def test_wrong_type_names_the_path(self, tmp_path: Path) -> None:
        """A wrong type says which key and what it got."""
        message = self.error(tmp_path, MINIMAL + '\n[requests]\nacks_per_sender_per_day = "many"\n')
        assert "requests.acks_per_sender_per_day:" in message
        assert "got str 'many'" in message

    def test_inline_secret_is_refused(self, tmp_path: Path) -> None:
        """A password written into the file is refused, and not echoed."""
        message = self.error(tmp_path, MINIMAL.replace('{ file = "imap-password" }', '"hunter2"'))
        assert "imap.password: secrets are not written inline" in message
        assert "hunter2" not in message

    def test_missing_secret_file(self, tmp_path: Path) -> None:
        """A secret file that is not there is a clear error."""
        message = self.error(tmp_path, MINIMAL.replace("imap-password", "nope"))
        assert "imap.password: cannot read secret file" in message

    def test_missing_section(self, tmp_path: Path) -> None:
        """A missing required table is named."""
        assert "smtp: required key is missing" in self.error(
            tmp_path, MINIMAL.replace("[smtp]\nhost", "[x]\nhost")
        )

    def test_not_toml(self, tmp_path: Path) -> None:
        """A syntax error is reported, not raised."""
        assert "not valid TOML" in self.error(tmp_path, "[controller\n")

    def test_no_file(self, tmp_path: Path) -> None:
        """A missing config file is a ConfigError."""
        with pytest.raises(ConfigError, match="no such config file"):
            load_settings(tmp_path / "missing.toml")

    def test_duplicate_connector_names(self, tmp_path: Path) -> None:
        """Two connectors may not share a name."""
        extra = (
            '\n[[connectors]]\nname = "a"\ntype = "sql"\n[[connectors]]\nname = "a"\ntype = "sql"\n'
        )
        assert "connector names must be unique: a" in self.error(tmp_path, MINIMAL + extra)


class TestMailboxChecks:
    def test_a_check_interval_longer_than_the_poll_is_refused(self, tmp_path: Path) -> None:
        """check_interval asks for mail within a poll: longer than poll_interval is an error."""
        text = MINIMAL.replace("[imap]\n", "[imap]\nuse_idle = false\ncheck_interval = 90\n")
        with pytest.raises(ConfigError, match=r"check_interval \(90 s\) is longer than "):
            load_settings(write(tmp_path, text))
        within = text.replace("check_interval = 90", "check_interval = 0.1")
        imap = load_settings(write(tmp_path, within)).imap
        assert (imap.check_interval, imap.poll_interval) == (0.1, 60.0)
        assert load_settings(write(tmp_path, MINIMAL)).imap.check_interval is None


class TestTransportSecurity:
    @pytest.mark.parametrize("section", ["imap", "smtp"])
    def test_plaintext_is_refused_unless_allowed(self, tmp_path: Path, section: str) -> None:
        """security = "none" fails unless the admin writes allow_plaintext = true."""
        text = MINIMAL.replace(f"[{section}]\n", f'[{section}]\nsecurity = "none"\n')
        with pytest.raises(ConfigError, match="unencrypted; set allow_plaintext = true"):
            load_settings(write(tmp_path, text))
        allowed = text.replace(f"[{section}]\n", f"[{section}]\nallow_plaintext = true\n")
        assert getattr(load_settings(write(tmp_path, allowed)), section).security == "none"
