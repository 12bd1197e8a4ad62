"""Ray batch jobs: entry points (train, generate, evaluate, audit) over data/, store/, metrics/, trainer/."""
