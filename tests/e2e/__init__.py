"""Fault drills and load (issue 10), run by `make test-e2e`.

Status at the end of session 1: written, and being made to pass when the session ended; not yet
verified green here, so `make test` (and CI) leave this folder out. The next session runs
`make test-e2e`, fixes what fails, and then drops `--ignore=tests/e2e` from the Makefile's test target.
"""
