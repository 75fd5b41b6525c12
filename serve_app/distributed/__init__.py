"""fal's `fal.distributed` API on Ray: port a worker by changing only the import.

    from serve_app.distributed import DistributedRunner, DistributedWorker
"""

from serve_app.distributed.placement import RankResources, placement_options
from serve_app.distributed.rank import RankFailed
from serve_app.distributed.runner import DistributedRunner, RunnerBroken
from serve_app.distributed.service import DistributedService
from serve_app.distributed.worker import DistributedWorker

__all__ = ["DistributedRunner", "DistributedService", "DistributedWorker", "RankFailed", "RankResources",
           "RunnerBroken", "placement_options"]
