"""Image datasets by spec: one module per source (digits, shapes, mnist-like, cifar10, imagefolder, parquet)."""
