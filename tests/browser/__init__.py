"""Tests through Debian's Chromium (Playwright): the three apps as people use them."""
