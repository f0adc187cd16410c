"""Environment settings and secrets: the only place that reads ``os.environ``.

ML settings live in ``params.yaml`` (see :mod:`pipeline.config`); these objects hold what
differs between machines: endpoints, credentials, ports, timeouts. One pydantic-settings
class per concern, each with its ``env_prefix``:

- :class:`Settings` (``AQ_*``): every pipeline step (metrics push, HTTP, sources, batches);
- :class:`ProjectSettings` (``AQ_PROJECT_DIR``): which project (:mod:`pipeline.paths`);
- :class:`ServingSettings` (``AQ_SERVING_*``): the online endpoint;
- :class:`Ports` (``AQ_<NAME>_PORT``): the local services, serving, the committed configs;
- :class:`CelerySettings` (``AQ_CELERY_*``): the Airflow scale-out profile;
- :class:`DagSettings` (``AQ_*``): the DAG files, at parse time and in their tasks;
- :class:`StackSettings` (``AQ_*``): the local stack's launcher (``stack/``);
- :class:`HostsSettings` (``AQ_*``): several hosts: the addresses the home host's services
  add to 127.0.0.1, the networks other hosts come from, a worker host's way home.

The environment is read in one door, ``<class>.from_env(env=None)``: constructing a class
directly (``Settings()``, ``Ports(serving=18000)``) gives its defaults and the values passed,
never the environment's, so tests and the committed configs' defaults stay what they say.
A bad value is refused naming the variable (:class:`SettingsError`); every ``SecretStr``
is registered with :mod:`pipeline.redaction` as soon as a settings object holds it.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

HOST = "127.0.0.1"  # every local service binds loopback only

# the mapping ``from_env`` reads while it builds one object (None: no environment at all)
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("aq_environ", default=None)


class SettingsError(ValueError):
    """An environment variable holds a value the project refuses; the message names it."""


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` or a test's)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def _register_secrets(value: SecretStr) -> None:
    from pipeline.redaction import register_secret

    secret = value.get_secret_value()
    register_secret(secret)
    try:  # a URL's password alone may show up in a driver's message
        register_secret(urlsplit(secret).password)
    except ValueError:
        pass


class EnvSettings(BaseSettings):
    """Base of every settings class: frozen, strict about what it accepts, one door to the
    environment (:meth:`from_env`)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True,
                                      allow_inf_nan=False, validate_default=True,
                                      populate_by_name=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _MappingEnvSource(settings_cls, environ))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: Any):
        """This class from ``env`` (default: ``os.environ``); ``values`` win over it."""
        environ = os.environ if env is None else env
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(cls._explain(exc, environ)) from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``."""
        info = cls.model_fields[field]
        if isinstance(info.validation_alias, str):
            return info.validation_alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def _explain(cls, exc: ValidationError, environ: Mapping[str, str]) -> str:
        problems = []
        aliases = {cls.env_name(name).lower(): name for name in cls.model_fields}
        for error in exc.errors():
            loc = str(error["loc"][0]) if error["loc"] else ""
            field = aliases.get(loc.lower(), loc)
            if field in cls.model_fields:
                name = cls.env_name(field)
                annotation = cls.model_fields[field].annotation
                problem = _problem(error, annotation)
                if annotation is SecretStr:  # a refused secret is still a secret: no value
                    problems.append(f"environment variable {name} {problem}")
                    continue
                raw = next((v for k, v in environ.items() if k.upper() == name), error["input"])
                problems.append(f"environment variable {name}={raw!r} {problem}")
            else:
                problems.append(f"{cls.__name__}: {error['msg']}")
        return "; ".join(problems)

    def model_post_init(self, context: Any) -> None:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                _register_secrets(value)


def _problem(error: Mapping[str, Any], annotation: Any) -> str:
    """A pydantic error as the end of a sentence about one variable."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return "is not a number"
    if kind == "finite_number":
        return "is not a finite number"
    if kind == "greater_than":
        return "must be positive" if ctx.get("gt") == 0 else f"must be > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than":
        return f"must be below {ctx.get('lt')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind == "literal_error":
        choices = [a for a in get_args(annotation) if isinstance(a, str)]
        return f"is not one of {', '.join(choices)}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")



# ----------------------------------------------------------------------------- the steps


class Settings(EnvSettings):
    """What a pipeline step needs from the machine: the Pushgateway, HTTP bounds, the
    providers' endpoints and key, how much it holds and runs at once (``AQ_*``)."""

    model_config = SettingsConfigDict(env_prefix="AQ_")

    pushgateway_url: str | None = None
    metrics_job: str = "aq_pipeline"
    push_timeout_s: float = Field(2.0, gt=0)
    http_timeout_s: float = Field(20.0, gt=0)  # one attempt: connect, headers, whole body
    http_total_s: float = Field(120.0, gt=0)  # every attempt and backoff wait of one request
    http_max_bytes: int = Field(64 * 1024 * 1024, gt=0)  # largest response body read
    openweathermap_api_key: SecretStr = Field(SecretStr(""),
                                              validation_alias="OPENWEATHERMAP_API_KEY")
    open_meteo_air_quality_url: str = "https://air-quality-api.open-meteo.com/v1/air-quality"
    open_meteo_forecast_url: str = "https://api.open-meteo.com/v1/forecast"
    open_meteo_archive_url: str = "https://archive-api.open-meteo.com/v1/archive"
    open_meteo_previous_runs_url: str = "https://previous-runs-api.open-meteo.com/v1/forecast"
    openweathermap_url: str = "https://api.openweathermap.org/data/2.5/air_pollution"
    # "plain": no timestamp on log lines (a task log that stamps each line itself)
    log_format: Literal["timestamped", "plain"] = "timestamped"
    # one rate limit per provider for every process sharing this Redis (Celery workers);
    # unset: per process. The Airflow scale-out profile sets it (stack/airflow_celery.py)
    rate_limit_redis_url: SecretStr = SecretStr("")
    # locations a step holds in memory at once (preprocess, evaluate, promote, predict):
    # memory per step grows with it, not with the number of locations; outputs do not change
    batch_locations: int = Field(25, gt=0)
    # worker processes a step may use for CPU-bound work: ingestion from a local source
    # (synthetic; a live provider always uses one, its rate limit being per process unless
    # shared in Redis) and preprocess's location batches; 1: everything in the step's process
    processes: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 8), gt=0)
    # the directory a relative source.csv.path resolves against (where exports live differs
    # per machine); unset: the project directory
    csv_dir: str | None = None


class TrackingSettings(EnvSettings):
    """Where the steps log their MLflow runs (pipeline/io/tracking.py, docs/mlops.md):
    ``AQ_MLFLOW_*``, and MLflow's own request bounds and credential variables. No URI (unset,
    empty or ``off``): tracking is off."""

    model_config = SettingsConfigDict(env_prefix="AQ_MLFLOW_")

    uri: str | None = Field(None, validation_alias="AQ_MLFLOW_TRACKING_URI")
    experiment: str = "aq-forecast"
    model_name: str = "aq-forecast"
    # MLflow's own variables, with shorter defaults than its client's (120 s, 7 retries): a
    # step waits for a tracking server at most ~ timeout x (retries + 1), then queues the run
    timeout_s: float = Field(5.0, gt=0, validation_alias="MLFLOW_HTTP_REQUEST_TIMEOUT")
    max_retries: int = Field(1, ge=0, le=20, validation_alias="MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    token: SecretStr = Field(SecretStr(""), validation_alias="MLFLOW_TRACKING_TOKEN")
    username: str = Field("", validation_alias="MLFLOW_TRACKING_USERNAME")
    password: SecretStr = Field(SecretStr(""), validation_alias="MLFLOW_TRACKING_PASSWORD")

    @field_validator("uri", mode="before")
    @classmethod
    def _server_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() in ("", "off"):
            return None
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("is not an http(s) URL of an MLflow tracking server (or 'off')")
        return text.rstrip("/")

    @property
    def enabled(self) -> bool:
        return self.uri is not None


def fault_point(name: str) -> None:
    """Crash-test hook: ``AQ_FAULT_KILL_AT=<name>`` SIGKILLs this process at that write point.

    The crash-safety tests kill real processes exactly between two writes (e.g. a model's
    artifact and its metadata) and check what the next run makes of it.
    """
    if os.environ.get("AQ_FAULT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class ProjectSettings(EnvSettings):
    """Which project a process works on: ``AQ_PROJECT_DIR`` (Airflow tasks, the stack's
    services and tests set it; :mod:`pipeline.paths` falls back to the working directory)."""

    model_config = SettingsConfigDict(env_prefix="AQ_")

    project_dir: Path | None = None


# ----------------------------------------------------------------------------- serving


class ServingSettings(EnvSettings):
    """The online endpoint's machine settings (``AQ_SERVING_*``); see docs/serving.md."""

    model_config = SettingsConfigDict(env_prefix="AQ_SERVING_")

    workers: int = Field(2, gt=0)
    max_body_bytes: int = Field(64 * 1024, gt=0)  # larger request bodies get 413
    stale_after_s: float = Field(3 * 3600.0, gt=0)  # older batch forecasts are flagged stale
    reload_interval_s: float = Field(2.0, gt=0)  # how often each worker checks for news
    slo_latency_s: float = Field(0.1, gt=0)  # latency SLO: 99% of /v1 requests faster
    slo_latency_target: float = Field(0.99, gt=0, lt=1)
    slo_error_ratio: float = Field(0.001, gt=0, lt=1)  # availability SLO: share of 5xx
    timeout_s: float = Field(60.0, gt=0)  # gunicorn: a silent worker (booting too) restarts
    client_timeout_s: float = Field(5.0, gt=0)  # nginx: headers within, at most between reads
    conn_per_client: int = Field(32, gt=0)  # nginx: requests in progress per client address
    # prometheus_client's multiprocess directory (set under gunicorn): metrics across workers
    prometheus_multiproc_dir: str = Field("", validation_alias="PROMETHEUS_MULTIPROC_DIR")


# ----------------------------------------------------------------------------- ports


def _port(default: int, name: str):
    return Field(default, gt=0, lt=65536, validation_alias=f"AQ_{name.upper()}_PORT")


class Ports(EnvSettings):
    """The one config of local service ports: upstream defaults, ``AQ_<NAME>_PORT`` overrides.

    Every local service binds ``127.0.0.1`` only. The defaults are the upstream ones, so the
    committed Prometheus/Alertmanager configs (and docker-compose with ``network_mode:
    host``) work unchanged; tests pass free ports instead.
    """

    prometheus: int = _port(9090, "prometheus")
    pushgateway: int = _port(9091, "pushgateway")
    alertmanager: int = _port(9093, "alertmanager")
    webhook: int = _port(9095, "webhook")  # the local Alertmanager receiver (stack/webhook.py)
    node_exporter: int = _port(9100, "node_exporter")
    airflow: int = _port(8080, "airflow")  # Airflow api-server
    serving: int = _port(8000, "serving")  # the forecast API (nginx in front of gunicorn)
    # mtail: nginx's answers as metrics (mtail's default port)
    serving_proxy_metrics: int = _port(3903, "serving_proxy_metrics")
    postgres: int = _port(5432, "postgres")  # Airflow's database, scale-out profile
    redis: int = _port(6379, "redis")  # Celery broker and shared rate limits, scale-out
    # the home host's door for workers on other hosts (scale-out with AQ_BIND_ADDRESSES):
    # the execution API, the Pushgateway and the project's shared state (stack/gateway.py)
    gateway: int = _port(8096, "gateway")
    mlflow: int = _port(5000, "mlflow")  # the MLflow tracking server (docs/mlops.md)
    mlserver: int = _port(8090, "mlserver")  # MLServer's V2 REST API (the champion)
    mlserver_grpc: int = _port(8091, "mlserver_grpc")  # its V2 gRPC API (always started)
    mlserver_metrics: int = _port(8092, "mlserver_metrics")  # its Prometheus /metrics
    host: str = HOST

    RUNBOOK_PATH: ClassVar[str] = "/runbook"

    @staticmethod
    def env_var(name: str) -> str:
        return f"AQ_{name.upper()}_PORT"

    def names(self) -> list[str]:
        return [name for name in type(self).model_fields if name != "host"]

    def address(self, name: str) -> str:
        return f"{self.host}:{getattr(self, name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"

    def runbook_base(self) -> str:
        """Where the committed rules' runbook links point: the page the webhook serves."""
        return self.url("webhook") + self.RUNBOOK_PATH

    def env(self) -> dict[str, str]:
        """``AQ_<NAME>_PORT`` for every port: what a child process needs to see the same ports."""
        return {self.env_var(n): str(getattr(self, n)) for n in self.names()}

    def replace(self, **ports: int) -> Ports:
        return self.model_copy(update=ports)


# ----------------------------------------------------------------------------- Airflow


class CelerySettings(EnvSettings):
    """The Airflow scale-out profile (``AQ_CELERY_*``): Celery workers started on this host,
    task processes per worker, and (in a worker) its own name."""

    model_config = SettingsConfigDict(env_prefix="AQ_CELERY_")

    workers: int = Field(2, gt=0)
    concurrency: int = Field(2, gt=0)
    worker: str = ""  # set by the launcher in each worker's environment: task hostnames


class DagSettings(EnvSettings):
    """What the DAG files read at parse time and their tasks at run time (``AQ_*``)."""

    model_config = SettingsConfigDict(env_prefix="AQ_")

    retrain_schedule: str = "0 2 * * *"  # cron of the nightly retraining
    ingest_batch_size: int = Field(2, ge=1)  # locations per mapped ingestion task
    task_retries: int = Field(2, ge=0)  # retries of every task (delay doubled each time)
    task_retry_delay_s: int = Field(60, ge=1)
    dvc_remote: str = "local"  # the DVC remote new data is pushed to
    max_silent_hours: int = Field(6, ge=1)  # ingest_quality: a location silent for longer
    max_quarantine_share: float = Field(0.5, gt=0, le=1)  # ingest_quality: refused share


# ----------------------------------------------------------------------------- the stack

_PASSWORD = re.compile(r"[A-Za-z0-9_\-.~]{16,}")


class StackSettings(EnvSettings):
    """The local stack's launcher (``stack/``, docker-compose's ``airflow-init``): the
    Airflow profile, passwords given instead of generated, where alerts' runbook links
    point."""

    model_config = SettingsConfigDict(env_prefix="AQ_")

    airflow_profile: Literal["local", "celery"] = "local"
    postgres_password: SecretStr = SecretStr("")
    redis_password: SecretStr = SecretStr("")
    runbook_base_url: str = ""

    @field_validator("airflow_profile", mode="before")
    @classmethod
    def _stripped(cls, value: object) -> object:
        return (value.strip() or "local") if isinstance(value, str) else value

    @field_validator("postgres_password", "redis_password")
    @classmethod
    def _url_safe(cls, value: SecretStr) -> SecretStr:
        given = value.get_secret_value()
        if given and not _PASSWORD.fullmatch(given):
            raise ValueError("must be at least 16 characters of A-Z a-z 0-9 _ - . ~ "
                             "(it goes into URLs)")
        return value


# ----------------------------------------------------------------------------- hosts


def _addresses(value: str, kind) -> tuple:
    import ipaddress

    items = [item.strip() for item in value.split(",") if item.strip()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError as exc:
        raise ValueError(f"not an IP {'network' if kind is ipaddress.ip_network else 'address'}"
                         f": {exc}") from None


class HostsSettings(EnvSettings):
    """Celery workers on other hosts that share nothing with this one but the network
    (docs/airflow.md, "Workers on other hosts").

    On the home host (scheduler, database, broker, the project directory):
    ``AQ_BIND_ADDRESSES`` are this host's addresses the other hosts reach (PostgreSQL and Redis
    listen there besides 127.0.0.1, the gateway only there), ``AQ_PEER_NETWORKS`` the networks
    they come from (PostgreSQL's and the gateway's access lists). On a worker host:
    ``AQ_HOME_URL``, the home host's gateway (``http://<address>:<AQ_GATEWAY_PORT>``), and
    ``AQ_STATE_PASSWORD``, the password of its shared state (generated on the home host into
    ``.stack/secrets/state.password`` unless given there too).
    """

    model_config = SettingsConfigDict(env_prefix="AQ_")

    bind_addresses: str = ""
    peer_networks: str = ""
    home_url: str = ""
    state_password: SecretStr = SecretStr("")

    @field_validator("bind_addresses")
    @classmethod
    def _addresses_valid(cls, value: str) -> str:
        import ipaddress

        for address in _addresses(value, ipaddress.ip_address):
            if address.is_loopback or address.is_unspecified:
                raise ValueError(f"{address}: name this host's addresses other hosts reach "
                                 "(127.0.0.1 is always bound; 0.0.0.0 would be every address)")
        return value

    @field_validator("peer_networks")
    @classmethod
    def _networks_valid(cls, value: str) -> str:
        import ipaddress

        _addresses(value, ipaddress.ip_network)
        return value

    @field_validator("home_url")
    @classmethod
    def _home_url_valid(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and (urlsplit(value).scheme not in ("http", "https")
                      or not urlsplit(value).hostname):
            raise ValueError("must be the home host's gateway, http://<address>:<port>")
        return value

    @field_validator("state_password")
    @classmethod
    def _state_password_safe(cls, value: SecretStr) -> SecretStr:
        given = value.get_secret_value()
        if given and not _PASSWORD.fullmatch(given):
            raise ValueError("must be at least 16 characters of A-Z a-z 0-9 _ - . ~")
        return value

    def addresses(self) -> list[str]:
        """This host's addresses for other hosts (without 127.0.0.1)."""
        import ipaddress

        return [str(a) for a in _addresses(self.bind_addresses, ipaddress.ip_address)]

    def networks(self) -> list[str]:
        import ipaddress

        return [str(n) for n in _addresses(self.peer_networks, ipaddress.ip_network)]

    @property
    def worker_host(self) -> bool:
        """True on a worker host: its tasks mirror the home host's project (AQ_HOME_URL)."""
        return bool(self.home_url)
