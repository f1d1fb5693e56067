"""headend/config.py: defaults < TOML file < URJA_* environment < flags, every problem reported
with its source."""
import pytest

from headend.config import ConfigError, Settings, load


def write(tmp_path, text):
    p = tmp_path / "headend.toml"
    p.write_text(text)
    return str(p)


def test_defaults_without_any_source():
    assert load(environ={}) == Settings()


def test_file_then_env_then_flags_take_precedence(tmp_path):
    path = write(tmp_path, 'api_port = 9001\nlog_level = "warning"\ndisconnect_approval_pct = 3\n')
    s = load(path, environ={"URJA_API_PORT": "9002", "URJA_LOG_LEVEL": "error"},
             flags={"api_port": 9003, "log_level": None})
    # port: flag beats env beats file; log level: env beats file (flag None = not given);
    # approval share: only the file sets it
    assert (s.api_port, s.log_level, s.disconnect_approval_pct) == (9003, "error", 3)


def test_headend_table_in_a_shared_file(tmp_path):
    path = write(tmp_path, '[headend]\napi_port = 9100\n\n[simulator]\nmeters = 5\n')
    assert load(path, environ={}).api_port == 9100


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "api_port = 9200\n")
    assert load(environ={"URJA_CONFIG": path}).api_port == 9200


def test_every_problem_is_listed_with_its_source(tmp_path):
    path = write(tmp_path, 'api_port = "x"\ncolour = "blue"\n')
    with pytest.raises(ConfigError) as err:
        load(path, environ={"URJA_DISCONNECT_APPROVAL_PCT": "150"},
             flags={"database_url": "mysql://x"})
    where = {(p[0], p[1]) for p in err.value.problems}
    assert where == {("api_port", "file %s" % path), ("colour", "file %s" % path),
                     ("disconnect_approval_pct", "env URJA_DISCONNECT_APPROVAL_PCT"),
                     ("database_url", "flag --database-url")}
    text = str(err.value)
    assert "must be 0..100, got 150" in text and "must start with sqlite:// or postgresql://" in text


def test_booleans_are_not_integers(tmp_path):
    with pytest.raises(ConfigError, match="must be an integer"):
        load(write(tmp_path, "api_port = true\n"), environ={})


def test_missing_and_broken_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(str(tmp_path / "nope.toml"), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "api_port = = 1\n"), environ={})


def test_unrelated_urja_variables_are_ignored():
    s = load(environ={"URJA_MASTER_KEY": "00" * 32, "URJA_TEST_POSTGRES_URL": "x"})
    assert s == Settings()


def test_passwords_are_masked_in_public_view():
    s = Settings(database_url="postgresql+psycopg://urja:hunter2@db:5432/urja")
    assert s.public()["database_url"] == "postgresql+psycopg://urja:***@db:5432/urja"


def test_command_ttl_zero_means_per_kind_default_and_small_values_are_refused():
    assert load(environ={"URJA_COMMAND_TTL_S": "0"}).command_ttl_s == 0
    with pytest.raises(ConfigError, match="command_ttl_s"):
        load(environ={"URJA_COMMAND_TTL_S": "30"})
