"""genaug's service side: the Serve app, the queue owner, the CLI. Names shared by its parts live here
(importing them costs nothing, unlike the modules that import torch)."""

APP_NAME = "genaug"  # the Serve application
QUEUE_ACTOR = "genaug-queue"  # the detached queue owner actor ...
NAMESPACE = "genaug"  # ... in this Ray namespace
