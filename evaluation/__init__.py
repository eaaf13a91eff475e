"""Before/after evaluation: test suites and their checks, the LLM judge, runs, reports, and teacher-made datasets."""
