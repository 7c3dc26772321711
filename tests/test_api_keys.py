"""CASSIA's set_api_key and validate_api_keys, against the local OpenAI-compatible server.

A named provider is pointed at the server by replacing its base URL in the provider
registry for one test (its key variable and quirks stay); a base URL is the server's own.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from llm_server import DEFAULT_MODEL, GetHandler, Handler, LLMServer, RecordedRequest, Reply

from cassia_sc.api_keys import (
    check_api_key,
    clear_validation_cache,
    set_api_key,
    validate_api_keys,
)
from cassia_sc.errors import AuthenticationFailed, MissingAPIKeyError, UnknownProvider
from cassia_sc.llm import LLMClient
from cassia_sc.providers import PROVIDERS, resolve_api_key, resolve_endpoint

#: Every variable a key is read from.
KEY_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "CASSIA_API_KEY",
    "CUSTOMIZED_API_KEY",
    "DEEPSEEK_API_KEY",
)
# Made-up keys, spelled so that nobody (and no secret scanner) takes them for real ones.
SECRET = "fake-key-for-tests-NOT-A-SECRET-0001"
OTHER = "fake-key-for-tests-NOT-A-SECRET-0002"
PASSWORD = "fake-password-NOT-A-SECRET"  # of a proxy's URL

Start = Callable[..., LLMServer]


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key variable set, and whatever a test sets undone after it; no check remembered."""
    for variable in KEY_VARIABLES:
        # Set first, so that the variable's absence is recorded and restored after the test.
        monkeypatch.setenv(variable, "unset")
        monkeypatch.delenv(variable)
    clear_validation_cache()
    yield
    clear_validation_cache()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """``serve(*names, handler=..., get_handler=..., models=...)`` starts a server and points
    the named providers at it."""
    servers: list[LLMServer] = []

    def start(
        *names: str,
        handler: Handler | None = None,
        get_handler: GetHandler | None = None,
        models: tuple[str, ...] = (DEFAULT_MODEL,),
    ) -> LLMServer:
        server = LLMServer(handler, models=models, get_handler=get_handler)
        servers.append(server)
        for name in names:
            monkeypatch.setitem(PROVIDERS, name, replace(PROVIDERS[name], base_url=server.base_url))
        return server

    yield start
    for server in servers:
        server.close()


def sent(server: LLMServer) -> int:
    """Requests the server received: GET ones (model list, key) and chat completions."""
    return len(server.get_requests) + server.request_count


def status(code: int, message: str | None = None) -> Handler:
    return lambda request, index: Reply(status=code, error_message=message)


def keys_set() -> dict[str, str]:
    return {v: os.environ[v] for v in KEY_VARIABLES if v in os.environ}


# ----------------------------------------------------------------------------- set_api_key


def test_set_api_key_keeps_cassias_signature():
    parameters = list(inspect.signature(set_api_key).parameters.values())
    assert [p.name for p in parameters] == ["api_key", "provider"]
    assert parameters[1].default == "openai"
    set_api_key(SECRET)
    assert keys_set() == {"OPENAI_API_KEY": SECRET}


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("openrouter", "OPENROUTER_API_KEY"),
        ("OpenRouter", "OPENROUTER_API_KEY"),
    ],
)
def test_set_api_key_sets_the_named_providers_variable_only(provider, variable):
    set_api_key(f"  {SECRET}\n", provider)  # as copied, with a line end
    assert keys_set() == {variable: SECRET}
    assert resolve_api_key(resolve_endpoint(provider)) == SECRET


def test_set_api_key_for_a_base_url_sets_cassias_variable_and_ours():
    set_api_key(SECRET, "https://proxy.example.org/v1")
    assert keys_set() == {"CUSTOMIZED_API_KEY": SECRET, "CASSIA_API_KEY": SECRET}
    set_api_key(OTHER, "https://api.deepseek.com/v1")
    assert keys_set() == dict.fromkeys(
        ("CUSTOMIZED_API_KEY", "CASSIA_API_KEY", "DEEPSEEK_API_KEY"), OTHER
    )


def test_a_key_set_for_a_base_url_is_the_one_a_run_sends(monkeypatch, serve):
    server = serve(handler=lambda request, index: Reply(content="T cell"))
    monkeypatch.setenv("CASSIA_API_KEY", OTHER)  # left over in the shell
    set_api_key(SECRET, server.base_url)
    with LLMClient(model=DEFAULT_MODEL, provider=server.base_url, cache=False) as client:
        client.complete([{"role": "user", "content": "Which cell type?"}])
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize(
    "api_key", ["", "   ", None, 42, "sk-test two parts", "sk-test\x00", "sk-tést-café"]
)
def test_set_api_key_refuses_what_cannot_be_a_key(api_key):
    with pytest.raises(ValueError, match=r"^api_key ") as raised:
        set_api_key(api_key, "openai")
    assert "\n" not in str(raised.value)
    assert keys_set() == {}
    if isinstance(api_key, str) and api_key.strip():
        assert api_key.strip() not in str(raised.value)


@pytest.mark.parametrize("provider", ["openrouterr", "", "ftp://example.org/v1", None, SECRET])
def test_set_api_key_refuses_an_unknown_provider_naming_the_accepted_ones(provider):
    with pytest.raises(UnknownProvider) as raised:
        set_api_key(SECRET, provider)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError) and "\n" not in message
    assert all(repr(name) in message for name in ("openai", "anthropic", "openrouter"))
    assert "base URL" in message and SECRET not in message
    assert keys_set() == {}


def test_swapped_arguments_never_show_the_key():
    with pytest.raises(UnknownProvider) as raised:
        set_api_key("openai", SECRET)  # CASSIA's own hint has them in this order
    assert SECRET not in str(raised.value)
    assert "set_api_key(api_key, provider)" in str(raised.value)
    assert keys_set() == {}


# ----------------------------------------------------------------------- the key variables


def test_for_a_base_url_ours_wins_over_cassias_and_the_difference_is_logged(monkeypatch, caplog):
    endpoint = resolve_endpoint("https://proxy.example.org/v1")
    monkeypatch.setenv("CUSTOMIZED_API_KEY", OTHER)
    assert resolve_api_key(endpoint) == OTHER
    assert endpoint.key_variable == "CUSTOMIZED_API_KEY"
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    monkeypatch.setenv("CASSIA_API_KEY", SECRET)
    assert resolve_api_key(endpoint) == SECRET
    assert endpoint.key_variable == "CASSIA_API_KEY"
    assert "CASSIA_API_KEY and CUSTOMIZED_API_KEY differ; using CASSIA_API_KEY (read first)" in (
        caplog.text
    )
    assert SECRET not in caplog.text and OTHER not in caplog.text


def test_deepseeks_own_variable_wins_there_only(monkeypatch):
    monkeypatch.setenv("CUSTOMIZED_API_KEY", OTHER)
    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    assert resolve_api_key(resolve_endpoint("https://api.deepseek.com/v1")) == SECRET
    assert resolve_api_key(resolve_endpoint("https://proxy.example.org/v1")) == OTHER


@pytest.mark.parametrize(
    ("provider", "named"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("https://proxy.example.org/v1", "CASSIA_API_KEY or CUSTOMIZED_API_KEY"),
        (
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY, CASSIA_API_KEY or CUSTOMIZED_API_KEY",
        ),
    ],
)
def test_a_missing_key_names_every_variable_read(provider, named):
    expected = f"set the environment variable {named} (or pass api_key= in Python)."
    with pytest.raises(MissingAPIKeyError, match=re.escape(expected)):
        resolve_api_key(resolve_endpoint(provider))


def test_a_missing_key_for_a_url_with_credentials_does_not_show_them():
    with pytest.raises(MissingAPIKeyError) as raised:
        resolve_api_key(resolve_endpoint("https://me:" + PASSWORD + "@proxy.example.org/v1"))
    assert PASSWORD not in str(raised.value)
    assert "https://[redacted]@proxy.example.org/v1" in str(raised.value)


def test_a_refused_key_names_the_variable_it_came_from(monkeypatch, serve):
    server = serve(handler=lambda request, index: Reply(status=401))
    monkeypatch.setenv("CUSTOMIZED_API_KEY", SECRET)
    with LLMClient(model=DEFAULT_MODEL, provider=server.base_url, cache=False) as client:
        with pytest.raises(AuthenticationFailed, match="Check CUSTOMIZED_API_KEY or api_key="):
            client.complete([{"role": "user", "content": "Which cell type?"}])


# ------------------------------------------------------------------------ validate_api_keys


def test_a_good_key_costs_one_free_request(monkeypatch, serve):
    server = serve("openai")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert validate_api_keys("openai") is True
    assert sent(server) == 1 and server.request_count == 0  # no tokens
    (request,) = server.get_requests
    assert request.path == "/v1/models"
    assert request.headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("where", ["named", "base URL", "given"])
def test_a_refused_key_is_false_naming_the_variable_never_the_key(
    monkeypatch, serve, caplog, where
):
    # The server echoes the key in its message, as OpenAI's does.
    refuse = status(401, f"Incorrect API key provided: {SECRET}")
    server = serve("openai", get_handler=refuse)
    caplog.set_level(logging.DEBUG)
    if where == "named":
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        assert validate_api_keys("openai") is False
        expected = "openai: the provider refused the key in OPENAI_API_KEY (HTTP 401)"
    elif where == "base URL":
        monkeypatch.setenv("CUSTOMIZED_API_KEY", SECRET)
        assert validate_api_keys(server.base_url) is False
        expected = "the provider refused the key in CUSTOMIZED_API_KEY (HTTP 401)"
    else:
        assert validate_api_keys("openai", api_key=SECRET) is False
        expected = "openai: the provider refused the api_key given (HTTP 401); check the key."
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert expected in warnings[0].getMessage()
    if where != "given":
        assert "cassia_sc.set_api_key(api_key, provider=" in warnings[0].getMessage()
    assert SECRET not in caplog.text and SECRET[-8:] not in caplog.text
    assert sent(server) == 1


def test_no_key_is_false_before_any_request(caplog):
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    assert validate_api_keys("anthropic") is False  # not redirected: nothing may be sent
    assert "anthropic: no API key: set ANTHROPIC_API_KEY, e.g. with cassia_sc.set_api_key(" in (
        caplog.text
    )
    status_ = check_api_key("https://proxy.example.org/v1")
    assert not status_.valid and "set CASSIA_API_KEY or CUSTOMIZED_API_KEY, e.g." in status_.reason
    assert not check_api_key("openai", api_key="  ").valid


def test_verbose_false_logs_nothing(serve, caplog):
    server = serve(get_handler=status(401))
    caplog.set_level(logging.DEBUG, logger="cassia_sc")
    assert validate_api_keys(server.base_url, verbose=False) is False
    assert validate_api_keys("openai", verbose=False) is False
    assert caplog.records == []


def test_the_model_is_checked_by_the_same_request_when_listed(monkeypatch, serve):
    server = serve("openai", models=("model-a", "model-b"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert validate_api_keys("openai", model="model-b") is True
    assert sent(server) == 1 and server.request_count == 0


def test_an_unlisted_model_is_asked_for_one_token(monkeypatch, serve, caplog):
    def chat(request: RecordedRequest, index: int) -> Reply:
        if request.model == "ghost":
            return Reply(status=404, error_message="The model `ghost` does not exist")
        return Reply(content="O", finish_reason="length")  # an alias the server knows

    server = serve("openai", handler=chat, models=("llama3.1:latest",))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    assert validate_api_keys("openai", model="llama3.1") is True
    assert validate_api_keys("openai", model="ghost") is False
    assert "openai: the server at http://127.0.0.1" in caplog.text
    assert "does not have model 'ghost' (HTTP 404)" in caplog.text
    assert [r.path for r in server.get_requests] == ["/v1/models", "/v1/models"]
    # OpenAI's cap field, one token, one short message
    assert [r.body["max_completion_tokens"] for r in server.requests] == [1, 1]
    assert "max_tokens" not in server.requests[0].body
    assert len(server.requests[0].messages) == 1


def test_a_server_without_a_model_list_needs_the_model(serve, caplog):
    server = serve(get_handler=status(404))
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    assert validate_api_keys(server.base_url) is False
    assert "has no model list to check the key with (HTTP 404); give model=" in caplog.text
    assert validate_api_keys(server.base_url, model=DEFAULT_MODEL) is True
    assert len(server.get_requests) == 2 and server.request_count == 1
    assert server.requests[0].body["max_tokens"] == 1


def test_a_success_is_remembered_for_the_session_and_force_revalidate_asks_again(
    monkeypatch, serve, caplog
):
    server = serve("openai")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.INFO, logger="cassia_sc")
    assert validate_api_keys("openai") is True
    assert validate_api_keys("openai") is True
    assert sent(server) == 1
    assert "openai: key already checked in this session." in caplog.text
    assert validate_api_keys("openai", force_revalidate=True) is True
    assert sent(server) == 2
    monkeypatch.setenv("OPENAI_API_KEY", OTHER)  # another key is checked anew
    assert validate_api_keys("openai") is True
    assert sent(server) == 3


def test_a_failure_is_not_remembered_and_a_revoked_key_is_forgotten(monkeypatch, serve):
    refusing = {"now": False}
    server = serve(
        "openai", get_handler=lambda r, i: Reply(status=401) if refusing["now"] else None
    )
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert validate_api_keys("openai", model=DEFAULT_MODEL) is True
    refusing["now"] = True  # the key is revoked
    assert validate_api_keys("openai", force_revalidate=True) is False
    assert validate_api_keys("openai", model=DEFAULT_MODEL) is False  # asked again
    refusing["now"] = False
    assert validate_api_keys("openai") is True
    assert sent(server) == 4


def test_without_a_provider_each_provider_with_a_key_is_checked(monkeypatch, serve, caplog):
    def answer(request: RecordedRequest, index: int) -> Reply | None:
        if request.path == "/v1/key":  # OpenRouter's
            return Reply(raw_body=b'{"data": {"label": "a test key"}}')
        return Reply(status=401)

    server = serve("openai", "anthropic", "openrouter", get_handler=answer)
    caplog.set_level(logging.WARNING, logger="cassia_sc")
    assert validate_api_keys() == {}
    assert "No API key is set" in caplog.text and sent(server) == 0
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", OTHER)
    assert validate_api_keys() == {"openrouter": True, "openai": False}
    assert sorted(r.path for r in server.get_requests) == ["/v1/key", "/v1/models"]
    assert server.request_count == 0


def test_openrouter_checks_the_key_on_its_key_route_and_the_model_with_one_token(
    monkeypatch, serve
):
    server = serve("openrouter", get_handler=lambda r, i: Reply() if r.path == "/v1/key" else None)
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    assert validate_api_keys("openrouter") is True
    assert [r.path for r in server.get_requests] == ["/v1/key"]
    assert validate_api_keys("openrouter", model="openai/gpt-4o-mini") is True
    assert len(server.get_requests) == 1 and server.request_count == 1  # one request, not two
    assert server.requests[0].body["max_tokens"] == 1


def test_anthropic_is_asked_for_its_whole_list_with_its_key_header(monkeypatch, serve):
    server = serve("anthropic", models=("claude-haiku-4-5",))
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    assert validate_api_keys("anthropic", model="claude-haiku-4-5") is True
    (request,) = server.get_requests
    assert request.headers["x-api-key"] == SECRET and "anthropic-version" in request.headers
    assert request.query == "limit=1000"


@pytest.mark.parametrize("code", [429, 500, 503])
def test_a_server_in_trouble_is_false_and_not_remembered(monkeypatch, serve, code):
    server = serve("openai", get_handler=status(code))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    result = check_api_key("openai")
    assert not result.valid and f"(HTTP {code}); try again later." in result.reason
    assert not check_api_key("openai").cached
    assert len(server.get_requests) == 2  # each asked, once: no retries


def test_an_unreachable_or_slow_server_is_false(serve):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = check_api_key(f"http://127.0.0.1:{port}/v1")
    assert not result.valid and "could not reach the server" in result.reason
    server = serve(get_handler=lambda r, i: Reply(delay=2.0))
    result = check_api_key(server.base_url, timeout=0.2)
    assert not result.valid and "timed out waiting for the server" in result.reason


def test_unknown_provider_and_misplaced_options_raise(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(ValueError, match="provider must be one of 'openrouter', 'openai'"):
        validate_api_keys("openrouterr")
    with pytest.raises(ValueError, match="need provider="):
        validate_api_keys(api_key=SECRET)  # never sent to every provider
    with pytest.raises(ValueError, match="need provider="):
        validate_api_keys(model="gpt-4o-mini")
    with pytest.raises(ValueError, match="timeout"):
        validate_api_keys("openai", timeout=0)
