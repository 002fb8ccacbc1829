"""The jobs the sensors and schedules launch, named so the runs list and the timeline read as the
system's own steps (a sensor's asset target alone would launch `__anonymous_asset_job_*` runs).

Each run asks for the part of its job it needs: a source's change run selects that source's raw
assets and what follows them, not the other sources'. The full job (`order_pipeline`, from the
CLI, the UI or a full refresh) is defined with the definitions.
"""

from collections.abc import Sequence

import dagster as dg

from assets.alerts import ORDER_ALERTS
from assets.carrier import RAW_TRACKING
from assets.common import SOURCES_GROUP
from assets.notifications import CUSTOMER_NOTIFICATIONS
from assets.published import EVENTS, PARCELS, SNAPSHOT
from assets.unified import UNIFIED_ORDERS

# What a change flows into, materialized in the same run as the change.
DOWNSTREAM = (UNIFIED_ORDERS, SNAPSHOT, PARCELS, EVENTS, CUSTOMER_NOTIFICATIONS, ORDER_ALERTS)
SOURCE_CHANGE_JOB = "source_change"
CARRIER_POLL_JOB = "carrier_poll"
CARRIER_PUSH_JOB = "carrier_push"
CUSTOMER_MESSAGES_JOB = "customer_messages"


def named_jobs(sensor_checks: Sequence[dg.AssetCheckKey] = ()) -> list:
    """The sensors' and schedules' jobs. `sensor_checks` are checks a sensor reports itself (whether a
    source answers), which the runs leave out: a run's checks are about what it materialized."""
    leave_out = dg.AssetSelection.checks(*sensor_checks)
    return [
        dg.define_asset_job(
            SOURCE_CHANGE_JOB,
            selection=(dg.AssetSelection.groups(SOURCES_GROUP) | dg.AssetSelection.assets(*DOWNSTREAM)) - leave_out,
            description="A source changed, or is due for its reconcile: load it, then unify, publish, message the "
            "customers and alert.",
        ),
        dg.define_asset_job(
            CARRIER_POLL_JOB,
            selection=[RAW_TRACKING, *DOWNSTREAM],
            description="Poll Kuaidi100 for the waybills due, then unify, publish, message the customers and alert.",
        ),
        dg.define_asset_job(
            CARRIER_PUSH_JOB,
            selection=list(DOWNSTREAM),
            description="Kuaidi100 pushed news (stored by the web hook): unify, publish, message the customers and "
            "alert.",
        ),
        dg.define_asset_job(
            CUSTOMER_MESSAGES_JOB,
            selection=[CUSTOMER_NOTIFICATIONS],
            description="Send the customer messages that waited: quiet hours, a daily cap, a vendor's retry.",
        ),
    ]
