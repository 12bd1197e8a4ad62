"""Image datasets by spec: one module per source: digits, shapes, mnist, cifar10, imagefolder, parquet."""
