"""`zapflow dev`: the whole platform as local processes, on embedded defaults, in one data dir (README.md)."""
