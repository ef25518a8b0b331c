"""Browser tests: a real server in a thread, Debian's chromium driven by Playwright."""
