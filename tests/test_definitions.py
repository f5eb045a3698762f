"""The whole code location loads, and the UI will show the lineage, checks, partitions and sensors."""

import dagster as dg

from medallion.definitions import defs

A = dg.AssetKey


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)


def test_lineage_topic_to_warehouse():
    graph = defs.resolve_asset_graph()
    assert graph.get(A("bronze_iot")).parent_keys == {A("topic_iot")}
    assert graph.get(A("silver_iot")).parent_keys == {A("bronze_iot")}
    for table in ("sensor_5m", "location_hourly"):
        assert graph.get(A(f"gold_iot_{table}")).parent_keys == {A("silver_iot")}
    assert graph.get(A("gold_iot_type_daily")).parent_keys == {A("gold_iot_sensor_5m")}  # folds its day
    for table in ("sensor_5m", "location_hourly", "type_daily"):
        assert graph.get(A(f"warehouse_iot_{table}")).parent_keys == {A(f"gold_iot_{table}")}


def test_ads_lineage_daily_partitions_and_groups_by_stream_and_layer():
    graph = defs.resolve_asset_graph()
    assert graph.get(A("silver_ads")).parent_keys == {A("bronze_ads")}
    assert graph.get(A("warehouse_ads_campaign_daily")).parent_keys == {A("gold_ads_campaign_daily")}
    for key in ("bronze_ads", "silver_ads", "gold_ads_campaign_daily", "warehouse_ads_campaign_daily"):
        assert isinstance(graph.get(A(key)).partitions_def, dg.DailyPartitionsDefinition)
    groups = {key.to_user_string(): defs.resolve_assets_def(key).group_names_by_key[key] for key in graph.materializable_asset_keys}
    for stream in ("iot", "ads"):
        for layer in ("bronze", "silver", "gold", "warehouse"):
            members = {k for k, g in groups.items() if g == f"{stream}_{layer}"}
            assert members and all(k.startswith(f"{layer}_{stream}") for k in members), (stream, layer, members)


def test_blocking_contract_checks_attached_to_silver_and_gold():
    graph = defs.resolve_asset_graph()
    for key in ("silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "gold_iot_type_daily"):
        check_keys = graph.get(A(key)).check_keys
        assert dg.AssetCheckKey(A(key), "contract") in check_keys
        spec = defs.resolve_assets_def(A(key)).get_spec_for_check_key(dg.AssetCheckKey(A(key), "contract"))
        assert spec.blocking


def test_partitions_hourly_by_event_time_and_daily_rollup():
    for key in ("bronze_iot", "silver_iot", "gold_iot_sensor_5m", "warehouse_iot_sensor_5m"):
        assert isinstance(defs.resolve_asset_graph().get(A(key)).partitions_def, dg.HourlyPartitionsDefinition)
    assert isinstance(defs.resolve_asset_graph().get(A("gold_iot_type_daily")).partitions_def, dg.DailyPartitionsDefinition)


def test_sensors_run_by_default():
    names = {s.name: s for s in defs.sensors}
    assert set(names) == {
        "kafka_iot", "automation_iot", "history_iot", "kafka_ads", "automation_ads", "history_ads", "recover_dead_runs", "alert_on_run_failure", "alert_on_check_failure", "embedded_broker_segments",
    }  # fmt: skip
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in names.values())
    assert names["kafka_iot"].job_name == "ingest_iot" and names["kafka_ads"].job_name == "ingest_ads"


def test_every_automated_asset_is_covered_by_a_layer_sensor():
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}
    covered = set()
    for s in defs.sensors:
        if isinstance(s, dg.AutomationConditionSensorDefinition):
            covered |= s.asset_selection.resolve(graph)
    assert automated and automated <= covered


def test_gold_and_warehouse_tables_carry_freshness_policies():
    graph = defs.resolve_asset_graph()
    for key in ("gold_iot_sensor_5m", "warehouse_iot_sensor_5m", "gold_ads_campaign_daily", "warehouse_ads_campaign_daily"):
        policy = graph.get(A(key)).freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy), key
        assert policy.fail_window.to_timedelta().total_seconds() == 15 * 60
    assert graph.get(A("silver_iot")).freshness_policy is None


def test_erasure_job_takes_request_ids_not_subject_ids():
    job = defs.resolve_job_def("erase_subject")
    fields = job.graph.node_named("erase_requested_subjects").definition.config_schema.as_field().config_type.fields
    assert set(fields) == {"request_ids"}
