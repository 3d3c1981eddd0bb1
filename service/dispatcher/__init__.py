"""The dispatcher: moves queued jobs onto Ray and keeps the database in step with Ray.

``loop`` (the thread, one pass, the start-up reconciliation), ``watch`` (one active job against Ray,
endings, retries, spooled events), ``submit`` (claims, submissions, driver tokens), ``stops`` (cancels,
the fence between attempts, orphaned Ray jobs), ``guard`` (one job's errors stay that job's),
``health`` (the loop's heartbeat, rate-limited warnings), ``ray_job`` (a job's attempt as a Ray job),
``policy`` (timings), ``context`` (what the parts share).
"""

from service.dispatcher.loop import Dispatcher
from service.dispatcher.policy import DispatchPolicy
from service.dispatcher.ray_job import driver_entrypoint, driver_env, entrypoint_resources, submission_id

__all__ = ["DispatchPolicy", "Dispatcher", "driver_entrypoint", "driver_env", "entrypoint_resources",
           "submission_id"]
