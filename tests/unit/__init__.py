"""Tests of code alone: no database, server, engine or browser."""
