"""Automation policies, named once. Silver, Gold and warehouse loads follow their parents."""

import os

import dagster as dg

AC = dg.AutomationCondition

# Late data arrives with nearly every micro-batch of a stream run (the simulator sends 1% of readings hours
# late), so older partitions would be asked for again every second. They are asked for at most once per
# tick of this cron (their waiting changes are taken together); the newest partition is carried by the
# stream run itself. Empty: at once (one-pass runs, the tests).
LATE_DATA_CRON = os.environ.get("MEDALLION_LATE_DATA_CRON", "*/2 * * * *")


def follow_parents(late_data_cron: str | None) -> dg.AutomationCondition:
    """Any partition whose parents changed (late data in older hours included), not while it or a parent is
    in progress, and never past a failed blocking check (plain eager() would only act on the newest window);
    older partitions at most once per tick of `late_data_cron`."""
    follow = AC.eager().without(AC.in_latest_time_window()) & AC.all_deps_blocking_checks_passed()
    if late_data_cron:
        follow = follow & (AC.in_latest_time_window() | AC.cron_tick_passed(late_data_cron).since_last_handled())
    return follow.with_label("follow parents (any partition, checks passed)")


FOLLOW_PARENTS = follow_parents(LATE_DATA_CRON)

# A warehouse load rides in the same run as the Gold partition it loads when that one is requested: the
# Gold step's blocking check still stops the load if it fails (Dagster skips the steps after a failed
# blocking check), and the load does not wait a tick and a run of its own.
FOLLOW_GOLD = (
    AC.eager().without(AC.in_latest_time_window())
    & AC.all_deps_match(AC.will_be_requested() | AC.all_checks_match(AC.check_passed(), blocking_only=True))
).with_label("follow Gold (any partition, in Gold's run, checks passed)")

# A daily rollup over hourly parents. While data flows one of its hours is nearly always being written, so it
# cannot wait for none to be in progress (it would never run): it runs at most once a minute while parents
# are in progress (it reads the versions they have published; their next update brings it back) and at
# once when they are quiet. Hours that never received data are normal, so missing parents don't block, and
# a new empty day is not a reason to run.
# A parent's check being evaluated again (its run in progress) does not hold it back either: what the
# parent has published passed its contract (write ▸ audit ▸ publish). As with Dagster's own
# all_deps_blocking_checks_passed(), one hour whose check failed does not stop the day: the rollup reads that
# hour's last good version.
_PARENT_CHECKS_PASSED_OR_RUNNING = AC.all_deps_match(
    AC.all_checks_match(AC.check_passed() | AC.will_be_requested() | AC.in_progress(), blocking_only=True)
).with_label("all parents' blocking checks passed (or being evaluated again)")
FOLLOW_PARENTS_ALLOW_GAPS = (
    AC.any_deps_updated().since_last_handled()
    & (~AC.any_deps_in_progress() | AC.cron_tick_passed("* * * * *").since_last_handled())
    & ~AC.in_progress()
    & _PARENT_CHECKS_PASSED_OR_RUNNING
).with_label("follow parents (any partition, gaps allowed, at most once a minute while parents are in progress, checks passed)")
