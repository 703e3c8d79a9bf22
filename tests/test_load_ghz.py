"""The ghz configurations in deploy/load/ghz: ghz's own rules for a configuration file, the requests they send,
and the metadata file that carries the bearer token. ghz cannot be installed here, so its rules are re-implemented."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, message_factory

from gateway.auth import Authenticator
from recsys_api.v1 import recsys_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
GHZ = ROOT / "deploy" / "load" / "ghz"
BEARER_METADATA = GHZ / "metadata" / "bearer.json"
TOKEN_VARIABLE = "RECSYS_TOKEN"  # deploy/load/k6/recommend.js reads the same variable

# How ghz reads a configuration file, from its source (github.com/bojand/ghz, runner/ and cmd/ghz/ at commit
# 37ed69e0, the newest NewConfig found; later releases add options such as count-errors):
# - cmd/ghz/main.go, main: runner.LoadConfig, then runner.Run(cfg.Call, cfg.Host, runner.WithConfig(&cfg)).
# - runner/config.go, Config: the JSON keys and their Go types (a Duration is a time.ParseDuration string);
#   LoadConfig: configor gives a zero-valued field its `default` tag, then checkData checks inline `data`.
# - runner/options.go, WithConfig/fromConfig: `max-duration`, else `duration`, above 0 makes `total` MaxInt32;
#   WithProtoFile wants a .proto extension; WithDataFromFile, WithBinaryDataFromFile, WithMetadataFromFile and
#   createClientTransportCredentials read their files before the run.
# - runner/options.go, NewConfig: the checks, with its messages.
STRING, BOOL, UINT, INT, DURATION, STRINGS, STRING_MAP, ANY = (
    "string", "bool", "uint", "int", "Duration", "[]string", "map[string]string", "interface{}")
GHZ_KEYS = {
    "proto": STRING, "protoset": STRING, "call": STRING, "cacert": STRING, "cert": STRING, "key": STRING,
    "skipTLS": BOOL, "skipFirst": UINT, "cname": STRING, "authority": STRING, "insecure": BOOL, "total": UINT,
    "async": BOOL, "concurrency": UINT, "concurrency-schedule": STRING, "concurrency-start": UINT,
    "concurrency-end": UINT, "concurrency-step": INT, "concurrency-step-duration": DURATION,
    "concurrency-max-duration": DURATION, "connections": UINT, "rps": UINT, "duration": DURATION,
    "duration-stop": STRING, "max-duration": DURATION, "timeout": DURATION, "data": ANY, "data-file": STRING,
    "binary-file": STRING, "metadata": STRING_MAP, "metadata-file": STRING, "stream-interval": DURATION,
    "output": STRING, "format": STRING, "connect-timeout": DURATION, "keepalive": DURATION, "cpus": UINT,
    "import-paths": STRINGS, "name": STRING, "tags": STRING_MAP, "reflect-metadata": STRING_MAP, "debug": STRING,
    "host": STRING, "enable-compression": BOOL, "load-schedule": STRING, "load-start": UINT, "load-end": UINT,
    "load-step": INT, "load-step-duration": DURATION, "load-max-duration": DURATION,
    "count-errors": BOOL,  # a later release's, documented in its www/docs/options.md
}
DEFAULTS = {"total": 200, "concurrency": 50, "connections": 1, "concurrency-start": 1}  # Config's default tags
ZERO: dict[str, Any] = {STRING: "", BOOL: False, UINT: 0, INT: 0, DURATION: "0"}  # Go's zero values
SCHEDULES = ("const", "step", "line")
MAX_INT32 = 2**31 - 1
GO_DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")
GO_DURATION_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def seconds(duration: str | int) -> float:
    """A Duration's value (time.ParseDuration's syntax is checked by `unmarshals`)."""
    return sum(float(number) * SECONDS[unit] for number, unit in GO_DURATION_TERM.findall(str(duration)))


def unmarshals(kind: str, value: Any) -> bool:
    """Whether encoding/json puts `value` into a Config field of that Go type (null leaves the field as it is)."""
    number = isinstance(value, int) and not isinstance(value, bool)
    return value is None or {
        STRING: isinstance(value, str), BOOL: isinstance(value, bool), UINT: number and value >= 0, INT: number,
        DURATION: (isinstance(value, str) or number) and GO_DURATION.fullmatch(str(value)) is not None,
        STRINGS: isinstance(value, list) and all(isinstance(item, str) for item in value),
        STRING_MAP: isinstance(value, dict) and all(isinstance(item, str) for item in value.values()),
        ANY: True,
    }[kind]


def ghz_problems(config: dict[str, Any], root: Path) -> list[str]:
    """Why ghz, run from `root`, would refuse the configuration file `config` ([] if it would not), with ghz's
    messages (Go's for files and types); ghz itself stops at the first."""
    wrong = [f"{key}: cannot unmarshal {value!r} into {GHZ_KEYS[key]}" for key, value in config.items()
             if key in GHZ_KEYS and not unmarshals(GHZ_KEYS[key], value)]
    if wrong:
        return wrong

    def setting(key: str) -> Any:
        return config.get(key) or DEFAULTS.get(key, ZERO[GHZ_KEYS[key]])

    problems = []
    data = config.get("data")
    if data is not None and not isinstance(data, dict | list):
        problems.append("Unsupported type for Data")
    elif isinstance(data, list) and not data:
        problems.append("Data array must not be empty")
    elif isinstance(data, list) and not all(isinstance(item, dict) for item in data):
        problems.append("Data array contains unsupported type")
    if setting("proto").strip() and not setting("proto").strip().endswith(".proto"):
        problems.append("proto: must have .proto extension")
    files = [setting(key).strip() for key in ("data-file", "binary-file", "metadata-file", "cacert")
             if setting(key).strip() and not (key == "cacert" and setting("skipTLS"))]
    files += [setting("cert"), setting("key")] if setting("cert") else []
    problems += [f"open {path}: no such file or directory" for path in files if not (root / path).is_file()]
    run_s = seconds(setting("max-duration")) or seconds(setting("duration"))
    total = MAX_INT32 if run_s > 0 else setting("total")
    if setting("connections") > setting("concurrency"):
        problems.append("number of connections cannot be greater than concurrency")
    problems += [f"{key} required" for key in ("call", "host") if not setting(key)]
    load, workers = (setting(f"{key}-schedule").strip().lower() or "const" for key in ("load", "concurrency"))
    if load not in SCHEDULES:
        problems.append('schedule much be "const", "step", or "line"')
    if load in ("step", "line"):
        if setting("load-start") == setting("load-end"):
            problems.append("load start cannot equal load end")
        if setting("load-step") == 0:
            problems.append("invalid load step")
        if load == "step" and seconds(setting("load-step-duration")) == 0:
            problems.append("invalid load step duration")
    if workers in ("step", "line"):
        if setting("concurrency-start") == setting("concurrency-end"):
            problems.append("concurrency start start cannot equal concurrency end")
        if setting("concurrency-step") == 0:
            problems.append("invalid concurrency step")
        if workers == "step" and seconds(setting("concurrency-step-duration")) == 0:
            problems.append("invalid concurrency step duration")
    if setting("skipFirst") > total:
        problems.append("you cannot skip more requests than those run")
    return problems


CALL = {"call": "recsys.v1.Recommender.Recommend", "host": "localhost:50051"}


@pytest.mark.parametrize("config, problems", [
    ({"connections": 2, "concurrency": 1}, ["number of connections cannot be greater than concurrency"]),
    ({"connections": 51}, ["number of connections cannot be greater than concurrency"]),  # concurrency's default
    ({"connections": 0, "concurrency": 1}, []),  # 0 is the default, 1
    ({"load-schedule": "Step", "load-start": 5, "load-end": 50, "load-step": 5}, ["invalid load step duration"]),
    ({"load-schedule": "line", "load-start": 5, "load-end": 5}, ["load start cannot equal load end",
                                                                 "invalid load step"]),
    ({"load-schedule": "ramp"}, ['schedule much be "const", "step", or "line"']),
    ({"concurrency-schedule": "line", "concurrency-end": 1, "concurrency-step": 1},
     ["concurrency start start cannot equal concurrency end"]),  # concurrency-start's default is 1
    ({"skipFirst": 201}, ["you cannot skip more requests than those run"]),
    ({"skipFirst": 201, "duration": "1m"}, []),
    ({"timeout": "5 s", "rps": -1}, ["timeout: cannot unmarshal '5 s' into Duration",
                                     "rps: cannot unmarshal -1 into uint"]),
    ({"data": []}, ["Data array must not be empty"]),
    ({"metadata-file": "missing.json", "cert": "client.pem"}, ["open missing.json: no such file or directory",
                                                              "open client.pem: no such file or directory",
                                                              "open : no such file or directory"]),
])
def test_the_rules_refuse_what_ghz_refuses(config, problems, tmp_path):
    assert ghz_problems({**CALL, **config}, tmp_path) == problems


@pytest.mark.parametrize("config_path", sorted(GHZ.glob("*.json")), ids=lambda path: path.name)
def test_ghz_configurations_obey_ghz_rules_and_send_valid_requests_to_existing_rpcs(config_path: Path):
    config = json.loads(config_path.read_text())
    assert set(config) <= set(GHZ_KEYS), set(config) - set(GHZ_KEYS)
    assert ghz_problems(config, ROOT) == []
    assert (ROOT / config["proto"]).exists() and config["insecure"]  # plaintext unless `--no-insecure`
    assert "metadata" not in config and "metadata-file" not in config  # the token comes with `-M`, see below
    service_name, method_name = config["call"].rsplit(".", 1)
    method = pb.DESCRIPTOR.services_by_name[service_name.removeprefix("recsys.v1.")].methods_by_name[method_name]
    requests = json.loads((ROOT / config["data-file"]).read_text())
    assert requests
    for request in requests:
        message = json_format.ParseDict(request, message_factory.GetMessageClass(method.input_type)())
        assert message.ByteSize() > 0


def test_the_bearer_metadata_file_sends_the_token_of_the_environment_that_the_gateway_wants():
    # ghz runs the file as a Go template with sprig's functions, `env` among them, then parses the JSON; the
    # variable's name is a raw string (backquotes): a quoted one would be \" inside JSON, a template syntax error.
    template = json.loads(BEARER_METADATA.read_text())
    token = "load-token-0123456789abcdef"
    metadata = {key: value.replace(f"{{{{env `{TOKEN_VARIABLE}`}}}}", token) for key, value in template.items()}
    assert metadata != template
    Authenticator({token: ["read"]}).check("/recsys.v1.Recommender/Recommend", metadata.items())
