"""Firmware profiles: loading, extends, validation with complete messages, precedence, origins."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import device_sdk.profiles as profiles_module
from device_sdk import ConfigError, HubEndpoint, SrvSettings, SupervisionPolicy, TlsSettings
from device_sdk.profiles import (
    DEFAULT_ORIGIN,
    MAX_EXTENDS_DEPTH,
    OVERRIDE_ORIGIN,
    Profile,
    available_profiles,
    default_search_path,
    env_variable,
    find_profile,
    load_profile,
    parse_setting,
)
from device_sdk.profiles.schema import SCHEMA, builtin_default, keys_markdown
from device_sdk.testbed import FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY

SHIPPED = (
    "raspberry-pi-gateway",
    "industrial-gateway",
    "cellular-low-data",
    "battery-sensor",
    "large-fleet",
    "test-fast",
)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "firmware_profiles"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path, name: str, **kwargs: object) -> Profile:
    kwargs.setdefault("env", {})
    return load_profile(name, search_path=[folder], **kwargs)  # type: ignore[arg-type]


def config_error(folder: Path, text: str, **kwargs: object) -> ConfigError:
    write(folder, "bad", text)
    with pytest.raises(ConfigError) as caught:
        load(folder, "bad", **kwargs)
    return caught.value


def assert_complete(error: ConfigError, *, file: str, key: str, value: str, allowed: str) -> None:
    """The message names the file, the dotted key, the bad value and what is allowed."""
    message = str(error)
    for part in (file, key, value, allowed):
        assert part in message, (part, message)
    assert error.field == key


# --------------------------------------------------------------------------- shipped profiles


def test_the_default_search_path_is_the_repositorys_folder() -> None:
    assert default_search_path() == (PROFILES_DIR,)
    assert set(SHIPPED) <= set(available_profiles())


def package_at(monkeypatch: pytest.MonkeyPatch, package: Path) -> None:
    """Make the profiles module believe it was imported from ``package``."""
    (package / "profiles").mkdir(parents=True)
    monkeypatch.setattr(profiles_module, "__file__", str(package / "profiles" / "__init__.py"))


# Where a package's profiles may sit, relative to the folder holding device_sdk/.
LAYOUTS = {
    "wheel": ("device_sdk/firmware_profiles",),  # inside the installed package
    "checkout": ("firmware_profiles",),  # beside the package, at the repository root
    "both": ("device_sdk/firmware_profiles", "firmware_profiles"),
    "neither": (),
}


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("wheel", "device_sdk/firmware_profiles"),
        ("checkout", "firmware_profiles"),
        ("both", "device_sdk/firmware_profiles"),  # the copy shipped inside the package wins
        ("neither", None),
    ],
)
def test_the_default_search_path_is_the_profiles_shipped_with_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, expected: str | None
) -> None:
    package_at(monkeypatch, tmp_path / "device_sdk")
    for folder in LAYOUTS[layout]:
        (tmp_path / folder).mkdir(exist_ok=True)
        write(tmp_path / folder, "a", "")
    assert default_search_path() == (() if expected is None else (tmp_path / expected,))
    if expected is not None:
        assert find_profile("a") == tmp_path / expected / "a.toml"


def test_with_no_profiles_shipped_a_name_is_an_error_that_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package_at(monkeypatch, tmp_path / "device_sdk")
    with pytest.raises(ConfigError, match=r"in no profile folder, or a path to a \.toml file"):
        load_profile("cellular-low-data", env={})


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_builds_a_client_config(name: str) -> None:
    profile = load_profile(name, env={})
    assert profile.name == name
    assert profile.description
    config = profile.client_config(
        client_id="dev-1", hubs=(HubEndpoint(name="primary", fqdn="hub.example.com"),)
    )
    assert config.retry == profile.retry
    assert config.liveness == profile.liveness
    assert config.outbox == profile.outbox
    assert config.mqtt_version == profile.mqtt_version
    assert config.hubs[0].tls is not None
    assert config.hubs[0].tls.min_version == profile.tls_min_version


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_says_who_it_is_for_and_why(name: str) -> None:
    text = (PROFILES_DIR / f"{name}.toml").read_text(encoding="utf-8")
    assert text.startswith(f"# {name}: ")
    assert "Why" in text


def test_test_fast_is_exactly_the_testbed_policies() -> None:
    profile = load_profile("test-fast", env={})
    assert profile.retry == FAST_RETRY
    assert profile.failover == FAST_FAILOVER
    assert profile.liveness == FAST_LIVENESS
    assert profile.failback_probe_interval == 0.5


def test_a_shipped_profile_extends_another() -> None:
    profile = load_profile("industrial-gateway", env={})
    base = load_profile("raspberry-pi-gateway", env={})
    assert [Path(p).stem for p in profile.chain] == ["raspberry-pi-gateway", "industrial-gateway"]
    assert profile.tls_min_version == "1.3"
    assert profile.retry == base.retry  # inherited whole
    assert profile.outbox.path == base.outbox.path  # inherited key in an overridden table


# --------------------------------------------------------------------------- extends


def test_extends_deep_merges_tables_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base",
        "[retry]\ninitial = 1.0\nmaximum = 50.0\n[dns]\nnameservers = ['10.0.0.1']\n",
    )
    write(tmp_path, "mid", "extends = 'base'\n[retry]\nmaximum = 60.0\n")
    write(
        tmp_path,
        "top",
        "extends = 'mid'\n[dns]\nnameservers = ['10.0.0.2']\n[mqtt]\nversion = '3.1.1'\n",
    )
    profile = load(tmp_path, "top")
    assert profile.retry.initial == 1.0  # from base
    assert profile.retry.maximum == 60.0  # mid wins over base
    assert profile.retry.multiplier == 2.0  # built-in default
    assert profile.dns.nameservers == ("10.0.0.2",)  # an array replaces the inherited one
    assert profile.mqtt_version == "3.1.1"
    assert profile.origins["retry.initial"] == str(tmp_path / "base.toml")
    assert profile.origins["retry.maximum"] == str(tmp_path / "mid.toml")
    assert profile.origins["retry.multiplier"] == DEFAULT_ORIGIN
    assert profile.chain == tuple(str(tmp_path / f"{n}.toml") for n in ("base", "mid", "top"))


def test_extends_accepts_a_path_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "bases").mkdir()
    write(tmp_path / "bases", "common", "[outbox]\nmax_messages = 7\n")
    path = write(tmp_path, "device", "extends = 'bases/common.toml'\n")
    assert load_profile(path, search_path=[], env={}).outbox.max_messages == 7


def test_an_extends_cycle_names_the_files(tmp_path: Path) -> None:
    write(tmp_path, "a", "extends = 'b'\n")
    write(tmp_path, "b", "extends = 'a'\n")
    with pytest.raises(ConfigError, match=r"cycle|a\.toml -> b\.toml -> a\.toml") as caught:
        load(tmp_path, "a")
    assert "a.toml -> b.toml -> a.toml" in str(caught.value)
    assert caught.value.field == "extends"


def test_a_profile_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "self", "extends = 'self'\n")
    with pytest.raises(ConfigError, match=r"self\.toml -> self\.toml"):
        load(tmp_path, "self")


def test_extends_depth_is_bounded(tmp_path: Path) -> None:
    write(tmp_path, "p0", "")
    for n in range(1, MAX_EXTENDS_DEPTH + 2):
        write(tmp_path, f"p{n}", f"extends = 'p{n - 1}'\n")
    load(tmp_path, f"p{MAX_EXTENDS_DEPTH - 1}")
    with pytest.raises(ConfigError, match=f"at most {MAX_EXTENDS_DEPTH} levels"):
        load(tmp_path, f"p{MAX_EXTENDS_DEPTH + 1}")


def test_extending_a_missing_profile_names_the_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, "extends = 'nowhere'\n")
    assert_complete(error, file="bad.toml", key="extends", value="'nowhere'", allowed="one of")


# --------------------------------------------------------------------------- validation


def test_an_unknown_key_names_file_key_value_and_the_allowed_keys(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[liveness]\nkeepalvie = 240\n")
    assert_complete(
        error, file="bad.toml", key="liveness.keepalvie", value="240", allowed="liveness.keepalive"
    )
    assert "did you mean 'liveness.keepalive'?" in str(error)


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[retyr]\ninitial = 1.0\n")
    assert_complete(error, file="bad.toml", key="retyr", value="{...}", allowed="retry")
    assert "did you mean 'retry'?" in str(error)


def test_a_section_must_be_a_table(tmp_path: Path) -> None:
    error = config_error(tmp_path, "retry = 5\n")
    assert_complete(error, file="bad.toml", key="retry", value="5", allowed="a table")


@pytest.mark.parametrize(
    ("toml", "key", "value", "got"),
    [
        ("[outbox]\nmax_messages = true", "outbox.max_messages", "True", "boolean"),
        ("[retry]\nmaximum = false", "retry.maximum", "False", "boolean"),
        ("[retry]\nmaximum = '60'", "retry.maximum", "'60'", "string"),
        ("[outbox]\nmax_messages = 10.0", "outbox.max_messages", "10.0", "float"),
        ("[dns]\nipv6 = 1", "dns.ipv6", "1", "integer"),
        ("[dns]\nnameservers = '10.0.0.1'", "dns.nameservers", "'10.0.0.1'", "string"),
        ("[dns]\nnameservers = [1, 2]", "dns.nameservers", "[1, 2]", "array"),
        ("[mqtt]\nversion = 5", "mqtt.version", "5", "integer"),
        ("[retry]\nmaximum = inf", "retry.maximum", "inf", "non-finite float"),
        ("[liveness]\nkeepalive = nan", "liveness.keepalive", "nan", "non-finite float"),
    ],
)
def test_a_wrong_type_is_refused(tmp_path: Path, toml: str, key: str, value: str, got: str) -> None:
    error = config_error(tmp_path, toml + "\n")
    assert_complete(error, file="bad.toml", key=key, value=value, allowed=SCHEMA[key].allowed)
    assert f"got a TOML {got}" in str(error)


@pytest.mark.parametrize(
    ("key", "toml", "value", "allowed"),
    [
        ("retry.initial", "initial = -1.0", "-1.0", "> 0 (jittered strategies)"),
        ("retry.maximum", "initial = 10.0\nmaximum = 5.0", "5.0", ">= initial (10.0)"),
        ("retry.strategy", "strategy = 'linear'", "'linear'", "exponential_jitter"),
        ("retry.max_attempts", "max_attempts = -3", "-3", ">= 1"),
        ("failover.failover_after_failures", "failover_after_failures = 0", "0", ">= 1"),
        (
            "failover.failback_probe_interval",
            "failback_probe_interval = 0",
            "0.0",
            "greater than 0",
        ),
        ("liveness.keepalive", "keepalive = 70000", "70000.0", "65535"),
        ("liveness.idle_probe_after", "keepalive = 10\nidle_probe_after = 20", "20.0", "keepalive"),
        ("dns.port", "port = 0", "0", "1 to 65535"),
        ("dns.nameservers", "nameservers = ['resolver.local']", "'resolver.local'", "IP addresses"),
        ("outbox.max_bytes", "max_bytes = 0", "0", "at least 1"),
        ("outbox.overflow", "overflow = 'block'", "'block'", "drop_oldest"),
        ("outbox.synchronous", "synchronous = 'OFF'", "'OFF'", "NORMAL"),
        ("tls.min_version", "min_version = '1.1'", "'1.1'", "1.3"),
        ("mqtt.version", "version = '4'", "'4'", "3.1.1"),
        ("mqtt.inflight_window", "inflight_window = 0", "0", "at least 1"),
        ("mqtt.inflight_window", "inflight_window = 70000", "70000", "65535"),
        ("mqtt.session_expiry", "session_expiry = -1", "-1", "at least 0"),
        ("mqtt.session_expiry", "session_expiry = 4294967296", "4294967296", "4294967295"),
        ("concierge.poll_jitter", "poll_jitter = 1.0", "1.0", "[0, 1)"),
        ("concierge.timeout", "timeout = 0", "0.0", "> 0"),
    ],
)
def test_an_out_of_range_value_is_refused(
    tmp_path: Path, key: str, toml: str, value: str, allowed: str
) -> None:
    error = config_error(tmp_path, f"[{key.partition('.')[0]}]\n{toml}\n")
    assert_complete(error, file=str(tmp_path / "bad.toml"), key=key, value=value, allowed=allowed)


def test_the_none_stand_ins_map_to_none(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p",
        "[retry]\nmax_attempts = 0\n[liveness]\nidle_probe_after = 0\n[outbox]\npath = ''\n",
    )
    profile = load(tmp_path, "p")
    assert profile.retry.max_attempts is None
    assert profile.liveness.idle_probe_after is None
    assert profile.outbox.path is None
    write(tmp_path, "q", "[retry]\nmax_attempts = 5\n[outbox]\npath = '/data/o.sqlite'\n")
    assert load(tmp_path, "q").retry.max_attempts == 5
    assert load(tmp_path, "q").outbox.path == "/data/o.sqlite"


def test_an_error_in_an_extended_profile_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "base", "[retry]\nmultiplier = 0.5\n")
    write(tmp_path, "top", "extends = 'base'\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "top")
    assert caught.value.source == str(tmp_path / "base.toml")
    assert caught.value.field == "retry.multiplier"


def test_top_level_keys_are_checked(tmp_path: Path) -> None:
    assert config_error(tmp_path, "extends = 3\n").field == "extends"
    assert config_error(tmp_path, "description = ''\n").field == "description"
    assert "did you mean 'extends'" in str(config_error(tmp_path, "extend = 'x'\n"))


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[retry\n")
    assert error.source == str(tmp_path / "bad.toml")
    assert "line 1" in str(error)


def test_an_unknown_profile_lists_the_available_ones(tmp_path: Path) -> None:
    write(tmp_path, "alpha", "")
    with pytest.raises(ConfigError, match=r"one of \['alpha'\]"):
        find_profile("beta", [tmp_path])
    with pytest.raises(ConfigError, match=r"an existing \.toml file"):
        find_profile(tmp_path / "missing.toml", [tmp_path])


# --------------------------------------------------------------------------- precedence


def test_environment_variables_are_parsed_with_the_keys_type(tmp_path: Path) -> None:
    write(tmp_path, "p", "")
    env = {
        "DEVICE_SDK_RETRY_MAXIMUM": "60",
        "DEVICE_SDK_RETRY_MAX_ATTEMPTS": "7",
        "DEVICE_SDK_DNS_NAMESERVERS": "10.0.0.2, 10.0.0.3",
        "DEVICE_SDK_DNS_IPV6": "no",
        "DEVICE_SDK_TLS_MIN_VERSION": "1.3",
        "DEVICE_SDK_FAILOVER_FAILBACK_PROBE_INTERVAL": "12.5",
        "DEVICE_SDK_PROFILE": "not a profile key, not ours",
        "PATH": "/usr/bin",
    }
    profile = load(tmp_path, "p", env=env)
    assert profile.retry.maximum == 60.0
    assert profile.retry.max_attempts == 7
    assert profile.dns.nameservers == ("10.0.0.2", "10.0.0.3")
    assert profile.dns.ipv6 is False
    assert profile.tls_min_version == "1.3"
    assert profile.failback_probe_interval == 12.5
    assert profile.origins["retry.maximum"] == "environment DEVICE_SDK_RETRY_MAXIMUM"


@pytest.mark.parametrize(
    ("variable", "text", "key"),
    [
        ("DEVICE_SDK_RETRY_MAXIMUM", "sixty", "retry.maximum"),
        ("DEVICE_SDK_OUTBOX_MAX_MESSAGES", "1.5", "outbox.max_messages"),
        ("DEVICE_SDK_DNS_IPV6", "maybe", "dns.ipv6"),
        ("DEVICE_SDK_RETRY_MAXIMUN", "60", "retry.maximun"),
        ("DEVICE_SDK_RETRY_MAXIMUM", "-5", "retry.maximum"),
    ],
)
def test_a_bad_environment_variable_names_it_and_the_profile(
    tmp_path: Path, variable: str, text: str, key: str
) -> None:
    write(tmp_path, "p", "")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "p", env={variable: text})
    message = str(caught.value)
    assert str(tmp_path / "p.toml") in message
    assert variable in message
    assert key in message
    assert repr(text) in message or text in message


def test_precedence_default_base_file_env_override(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base",
        "[retry]\nmaximum = 10.0\ninitial = 1.0\nlong_delay = 100.0\nstable_after = 3.0\n",
    )
    write(
        tmp_path,
        "top",
        "extends = 'base'\n[retry]\nmaximum = 20.0\nlong_delay = 200.0\nstable_after = 4.0\n",
    )
    env = {"DEVICE_SDK_RETRY_LONG_DELAY": "300", "DEVICE_SDK_RETRY_STABLE_AFTER": "5"}
    profile = load(tmp_path, "top", env=env, overrides={"retry.stable_after": 6})
    assert profile.retry.multiplier == 2.0  # built-in default
    assert profile.retry.initial == 1.0  # base
    assert profile.retry.maximum == 20.0  # file beats base
    assert profile.retry.long_delay == 300.0  # environment beats file
    assert profile.retry.stable_after == 6.0  # override beats environment
    assert profile.origins["retry.stable_after"] == OVERRIDE_ORIGIN
    assert profile.values["retry.stable_after"] == 6.0


def test_overrides_are_type_checked_like_the_file(tmp_path: Path) -> None:
    write(tmp_path, "p", "")
    with pytest.raises(ConfigError, match=r"got a TOML boolean") as caught:
        load(tmp_path, "p", overrides={"outbox.max_messages": True})
    assert caught.value.source == f"{tmp_path / 'p.toml'} ({OVERRIDE_ORIGIN})"
    with pytest.raises(ConfigError, match=r"did you mean 'retry\.maximum'"):
        load(tmp_path, "p", overrides={"retry.maxim": 5})


def test_a_range_error_caused_by_an_override_names_it(tmp_path: Path) -> None:
    write(tmp_path, "p", "[retry]\ninitial = 1.0\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "p", overrides={"retry.maximum": 0.5})
    assert caught.value.source == f"{tmp_path / 'p.toml'} ({OVERRIDE_ORIGIN})"


def test_every_key_has_an_origin_and_a_value(tmp_path: Path) -> None:
    write(tmp_path, "p", "[dns]\ntimeout = 1\n")
    profile = load(tmp_path, "p")
    assert set(profile.origins) == set(SCHEMA) == set(profile.values)
    assert profile.origins["dns.timeout"] == str(tmp_path / "p.toml")
    assert profile.values["dns.timeout"] == 1.0  # integers widen to floats
    assert {o for k, o in profile.origins.items() if k != "dns.timeout"} == {DEFAULT_ORIGIN}


def test_an_empty_profile_equals_the_built_in_defaults(tmp_path: Path) -> None:
    write(tmp_path, "p", "")
    profile = load(tmp_path, "p")
    assert profile.values == {key: builtin_default(k) for key, k in SCHEMA.items()}


def test_parse_setting_types_the_value() -> None:
    assert parse_setting("retry.maximum=60") == ("retry.maximum", 60.0)
    assert parse_setting("dns.ipv6 = false") == ("dns.ipv6", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_setting("retry.maximum")
    assert env_variable("failover.failback_probe_interval") == (
        "DEVICE_SDK_FAILOVER_FAILBACK_PROBE_INTERVAL"
    )


# --------------------------------------------------------------------------- client_config


def test_client_config_applies_the_tls_floor_and_keeps_plain_hubs(tmp_path: Path) -> None:
    write(tmp_path, "p", "[tls]\nmin_version = '1.3'\n")
    profile = load(tmp_path, "p")
    hubs = (
        HubEndpoint(name="a", fqdn="a.example.com"),
        HubEndpoint(name="b", fqdn="b.example.com", port=1883, tls=None),
    )
    config = profile.client_config(
        client_id="dev", hubs=hubs, srv=SrvSettings(domain="example.com"), envelope=True
    )
    assert config.hubs[0].tls == TlsSettings(min_version="1.3")
    assert config.hubs[1].tls is None
    assert config.srv is not None and config.srv.tls.min_version == "1.3"
    assert config.envelope is True


def test_client_config_keeps_a_stricter_hub(tmp_path: Path) -> None:
    write(tmp_path, "p", "")
    hub = HubEndpoint(name="a", fqdn="a.example.com", tls=TlsSettings(min_version="1.3"))
    config = load(tmp_path, "p").client_config(client_id="dev", hubs=(hub,))
    assert config.hubs[0] == hub


def test_client_config_gives_a_concierge_the_profiles_polling(tmp_path: Path) -> None:
    from device_sdk.concierge.settings import ConciergeSettings
    from device_sdk.concierge.trust import ConciergeTrust

    write(tmp_path, "p", "[concierge]\npoll_interval = 42.0\npoll_jitter = 0.1\ntimeout = 4\n")
    trust = ConciergeTrust(keys={"k": b"\x01" * 32}, allowed_hubs=("*.example.com",))
    settings = ConciergeSettings(url="https://concierge.example.com/v1/endpoint", trust=trust)
    hub = HubEndpoint(name="a", fqdn="a.example.com")
    config = load(tmp_path, "p").client_config(client_id="dev", hubs=(hub,), concierge=settings)
    assert config.concierge is not None
    assert (config.concierge.poll_interval, config.concierge.poll_jitter) == (42.0, 0.1)
    assert config.concierge.timeout == 4.0
    assert config.concierge.url == settings.url


def test_client_config_refuses_an_unknown_field(tmp_path: Path) -> None:
    write(tmp_path, "p", "")
    hub = HubEndpoint(name="a", fqdn="a.example.com")
    with pytest.raises(ConfigError, match="a ClientConfig field name"):
        load(tmp_path, "p").client_config(client_id="dev", hubs=(hub,), keep_alive=5)


def test_a_profile_is_frozen() -> None:
    profile = load_profile("test-fast", env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.values["retry.maximum"] = 1.0  # type: ignore[index]


# --------------------------------------------------------------------------- docs


def test_the_readme_key_table_matches_the_schema() -> None:
    readme = (PROFILES_DIR / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- keys:start -->\n(.*?)\n<!-- keys:end -->", readme, re.S)
    assert block is not None, "the README lost its keys markers"
    assert block.group(1) == keys_markdown(), (
        "firmware_profiles/README.md is out of date; regenerate the table with "
        "device_sdk.profiles.schema.keys_markdown()"
    )
    assert "Not built yet" not in readme


def test_the_readme_lists_every_shipped_profile() -> None:
    readme = (PROFILES_DIR / "README.md").read_text(encoding="utf-8")
    for name in available_profiles():
        assert f"`{name}`" in readme, name


def test_a_profile_names_the_supervision_policy(tmp_path: Path) -> None:
    (tmp_path / "strict.toml").write_text(
        'extends = "test-fast"\n[supervision]\nmax_faults = 2\nwindow = 30.0\n', encoding="utf-8"
    )
    profile = load_profile("strict", search_path=[tmp_path, *default_search_path()])
    config = profile.client_config(client_id="d", hubs=[HubEndpoint(name="h", fqdn="h.test")])
    assert config.supervision == SupervisionPolicy(max_faults=2, window=30.0)
