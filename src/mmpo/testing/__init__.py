"""Test fixtures shipped with mmpo, kept out of the library and the synthetic world: tiny, randomly
initialised stand-ins of the VLM families transformers ships (:mod:`mmpo.testing.families`), which the
test suite and the benchmarks build in-process to check every family trains with exact log-probs.
Nothing in the library imports this package."""
