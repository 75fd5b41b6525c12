"""fal-compatible queue API: submit, status (+ SSE stream), result, cancel and webhooks for every
endpoint of every service, spoken by the official `fal-client` package.

Modules, one concept each:
  settings   QueueSettings: limits, leases, journal, webhooks (typed config)
  state      the job state machine (states, transitions, timestamps, logs, fal's status shapes)
  queues     per-service FIFOs and running counts
  feed       versions, waiters and event rings that status streams wait on
  journal    append-only JSON-lines journal with group commit, replay and compaction
  messages   what crosses the ingress <-> store boundary (claims, updates, outcomes, QueueFull)
  store      JobStore: submit, claim, cancel, leases, retention; a detached named Ray actor per
             application, so it outlives ingress replicas
  client     typed calls to the store (actor or in-process) with timeouts; connect_store()
  webhooks   fal's webhook payload, HMAC-SHA256 signature, one delivery attempt
  dispatch   the Protocol the queue needs of the layer above (the ingress's Dispatcher provides it)
  runner     QueueRunner: inside each ingress replica, claims jobs and runs them through the
             ingress's Dispatcher (so Serve routes and autoscales the work), reports progress
  schemas    response models (OpenAPI)
  routes     install_queue_routes(app, dispatcher, settings, auth): the HTTP layer, which only translates

The queue sits below the ingress: nothing here imports `serve_app.ingress`.
"""

from serve_app.queue.settings import QueueSettings

__all__ = ["QueueSettings"]
