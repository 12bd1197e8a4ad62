"""Where things live and in what format: locations, atomic commits, shards, manifests, registry, loaders."""
