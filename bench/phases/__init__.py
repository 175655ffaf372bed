"""The benchmark's phases, one module each; `bench.session` runs them in order on one stack."""
