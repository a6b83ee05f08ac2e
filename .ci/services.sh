#!/usr/bin/env bash
# Optional services some tests use (each test skips with a reason when absent).
exit 0
