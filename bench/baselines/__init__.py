"""Small programs doing only the bare job with the same libraries, run as separate processes."""
