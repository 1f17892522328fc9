"""Scale-out of the model server's heavy work on a Ray cluster (the optional ``cortexloop[cluster]`` extra).

* :mod:`~modelserver.cluster.members`: one ensemble member trained from (config, data arrays, seed);
  members as Ray tasks, or one after another in process;
* :mod:`~modelserver.cluster.scoring`: pool scoring streamed in shards to an actor pool of scorers
  that hold the model weights once;
* :mod:`~modelserver.cluster.fleet`: distillation fleets, groups of students as tasks.

Only numpy arrays, state_dicts and plain data cross to Ray (Ray's own serialization inside the
cluster); nothing that arrives on the ZeroMQ socket is unpickled. Ray is imported only here, and
only when a cluster address is configured.
"""

from modelserver.cluster.runtime import RayCluster

__all__ = ["RayCluster"]
