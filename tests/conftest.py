"""Shared test configuration. The testbed fixtures come from device_sdk's pytest plugin."""

from __future__ import annotations
